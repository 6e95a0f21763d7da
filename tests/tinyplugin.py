"""A tiny in-repo plugin for engine tests: synthetic tabular records and an MLP.

Loaded by tests through ``privet.testing``'s host (or ``--plugin-dir tests``). Kept
deliberately small so the engine is tested without any modality plugin.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal

import attrs

import privet


class Blobs(privet.Source):
    """Gaussian blobs: ``features`` floats and an integer ``label`` per record.

    ``bad_every`` > 0 yields a BadRecord every that many records (for drop tests);
    ``shards`` splits the records over that many virtual shards.
    """

    @attrs.define(frozen=True)
    class Options:
        n: int = 256
        features: int = 8
        classes: int = 3
        noise: float = 0.5
        seed: int = 0
        bad_every: int = 0
        shards: int = 1

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard(f"blobs-{i}", i) for i in range(self.options.shards)]

    def files(self) -> list[str]:
        return []

    def read(self, shard: privet.Shard) -> Iterator[privet.Record | privet.BadRecord]:
        import numpy as np

        o = self.options
        rng = np.random.default_rng([o.seed, shard.start])
        centers = np.random.default_rng(o.seed).normal(0, 3, size=(o.classes, o.features))
        per_shard = o.n // o.shards
        for i in range(per_shard):
            if o.bad_every and (i + 1) % o.bad_every == 0:
                yield privet.BadRecord("unparseable", f"{shard.path}:{i + 1}")
                continue
            label = int(rng.integers(o.classes))
            x = centers[label] + rng.normal(0, o.noise, size=o.features)
            yield {"x": [float(v) for v in x], "label": label, "id": shard.start * per_shard + i}


class MLP(privet.Model):
    """A 3-layer MLP for classification or regression on ``x``."""

    @attrs.define(frozen=True)
    class Options:
        hidden: int = 32
        dropout: float = 0.0
        task: Literal["classification", "regression"] = "classification"

    @property
    def task(self) -> str:  # type: ignore[override]
        return self.options.task

    def fit(self, records) -> None:
        first = next(iter(records))
        self.features = len(first["x"])
        self.classes = max(int(r["label"]) for r in records) + 1

    def state_dict(self) -> dict:
        return {"features": self.features, "classes": self.classes}

    def load_state_dict(self, state: dict) -> None:
        self.features, self.classes = state["features"], state["classes"]

    def build(self):
        from torch import nn

        h = self.options.hidden
        out = self.classes if self.options.task == "classification" else 1
        return nn.Sequential(nn.Linear(self.features, h), nn.ReLU(), nn.Dropout(self.options.dropout),
                             nn.Linear(h, h), nn.ReLU(), nn.Linear(h, out))

    def encode(self, record):
        import torch

        return torch.tensor(record["x"], dtype=torch.float32), int(record["label"])

    def encode_inputs(self, record):
        """At prediction time there is no label: a placeholder target keeps the batch shape."""
        import torch

        return torch.tensor(record["x"], dtype=torch.float32), 0

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        out = module(x)
        if self.options.task == "classification":
            loss = F.cross_entropy(out, y, reduction="sum")
            return privet.StepOutput(loss, y.shape[0], out, y)
        target = y.float().unsqueeze(1)
        loss = F.mse_loss(out, target, reduction="sum")
        return privet.StepOutput(loss, y.shape[0], out, target)

    def example_inputs(self, batch):
        return (batch[0],)


class ColumnarMLP(MLP):
    """:class:`MLP` with the columnar fast path: whole batches from ``privet.Columns``.

    ``drop_label`` >= 0 makes examples of that label undecodable (``DropRecord``), both
    one by one and, for any batch holding one, in :meth:`encode_columns`.
    """

    @attrs.define(frozen=True)
    class Options(MLP.Options):
        drop_label: int = -1

    def encode(self, record):
        if int(record["label"]) == self.options.drop_label:
            raise privet.DropRecord("undecodable")
        return super().encode(record)

    def encode_columns(self, batch):
        import numpy as np
        import torch

        labels = batch.numpy("label")
        if (labels == self.options.drop_label).any():
            raise privet.DropRecord("undecodable")
        return torch.from_numpy(batch.numpy("x", np.float32)), torch.from_numpy(labels)


class Half(privet.Cleaner):
    """Scales every feature by a factor fitted as 1/max|x| on the training split."""

    needs_fit = True

    def fit(self, records) -> None:
        self.scale = 1.0 / max(max(abs(v) for v in r["x"]) for r in records)

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = state["scale"]

    def clean(self, record):
        if not math.isfinite(sum(record["x"])):
            raise privet.DropRecord("nonfinite")
        record["x"] = [v * self.scale for v in record["x"]]
        return record


@privet.hookimpl
def register_sources(register):
    register("tiny.blobs", Blobs)


@privet.hookimpl
def register_models(register):
    register("tiny.mlp", MLP)
    register("tiny.mlp_columns", ColumnarMLP)


@privet.hookimpl
def register_cleaners(register):
    register("tiny.scale", Half)
