"""A test plugin for export tests: a Linear-heavy classifier with named classes.

``exp.wide`` is what int8 quantization is for (most bytes in Linear weights), learns
its label names in ``fit`` and encodes records without a label at inference;
``exp.names`` turns integer labels into names and opts out of inference, since
prediction inputs carry no label.
"""

from __future__ import annotations

import attrs

import privet


class Wide(privet.Model):
    """A 4-layer MLP over ``x`` whose classes are the label strings seen in training."""

    @attrs.define(frozen=True)
    class Options:
        hidden: int = 256

    def fit(self, records) -> None:
        first = next(iter(records))
        self.features = len(first["x"])
        self.labels = sorted({str(r["label"]) for r in records})

    def state_dict(self) -> dict:
        return {"features": self.features, "labels": self.labels}

    def load_state_dict(self, state: dict) -> None:
        self.features, self.labels = state["features"], list(state["labels"])

    def class_names(self) -> list[str]:
        return self.labels

    def build(self):
        from torch import nn

        h = self.options.hidden
        return nn.Sequential(nn.Linear(self.features, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, h), nn.ReLU(), nn.Linear(h, len(self.labels)))

    def encode(self, record):
        import torch

        label = str(record["label"])
        if label not in self.labels:
            raise privet.DropRecord("unknown_label", label)
        return torch.tensor(record["x"], dtype=torch.float32), self.labels.index(label)

    def encode_inputs(self, record):
        import torch

        x = record["x"]
        if not isinstance(x, list) or len(x) != self.features:
            raise privet.DropRecord("bad_features", f"expected {self.features} numbers in 'x'")
        return torch.tensor(x, dtype=torch.float32), -1

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        out = module(x)
        return privet.StepOutput(F.cross_entropy(out, y, reduction="sum"), y.shape[0], out, y)

    def example_inputs(self, batch):
        return (batch[0],)

    def input_names(self) -> list[str]:
        return ["features"]

    def output_names(self) -> list[str]:
        return ["logits"]


class Names(privet.Cleaner):
    """Integer ``label`` -> ``class-N``. Training only: inputs to predict have no label."""

    applies_at_inference = False

    def clean(self, record):
        record["label"] = f"class-{int(record['label'])}"
        return record


@privet.hookimpl
def register_models(register):
    register("exp.wide", Wide)


@privet.hookimpl
def register_cleaners(register):
    register("exp.names", Names)
