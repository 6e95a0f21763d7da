"""Test-only components for the engine suite: fault injection, token sequences, skewed classes.

Loaded by ``tests/engine/conftest.py`` (registered on a ``privet_host``) and, for the
subprocess tests, through ``plugins.paths``. Nothing here imports torch at import time.
"""

from __future__ import annotations

from typing import Iterator, Literal

import attrs

import privet


class Skewed(privet.Source):
    """Two-feature records of ``classes`` classes where class ``k`` has ``ratio**k`` times fewer rows.

    Class 0 is the majority: with ``ratio`` 4 and 3 classes the shares are 16:4:1.
    """

    @attrs.define(frozen=True)
    class Options:
        n: int = 420
        classes: int = 3
        ratio: int = 4
        seed: int = 0

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard("skewed")]

    def files(self) -> list[str]:
        return []

    def read(self, shard: privet.Shard) -> Iterator[privet.Record]:
        import numpy as np

        o = self.options
        shares = [o.ratio ** (o.classes - 1 - k) for k in range(o.classes)]
        labels = np.repeat(np.arange(o.classes), [o.n * s // sum(shares) for s in shares])
        rng = np.random.default_rng(o.seed)
        rng.shuffle(labels)
        for i, label in enumerate(labels):
            x = rng.normal(float(label), 0.3, size=2)
            yield {"x": [float(v) for v in x], "label": int(label), "id": i}


class Probe(privet.Model):
    """A small MLP classifier that can inject one fault and records the labels it trains on.

    ``fault`` happens on the ``fault_at``-th training call of :meth:`step` (1-based):
    ``nan_loss`` makes that loss NaN, ``inf_grad`` / ``nan_grad`` keep the loss finite but
    make the gradient of the logits inf / NaN (what an fp16 overflow in backward does);
    ``nan_loss_from`` makes every loss from that call on NaN (a diverged model).
    """

    @attrs.define(frozen=True)
    class Options:
        hidden: int = 16
        dropout: float = 0.0
        fault: Literal["none", "nan_loss", "inf_grad", "nan_grad", "nan_loss_from"] = "none"
        fault_at: int = 0

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.train_calls = 0
        #: Labels of every training batch, in order (the engine runs step() in this process).
        self.seen_labels: list[int] = []

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
        return nn.Sequential(nn.Linear(self.features, h), nn.ReLU(), nn.Dropout(self.options.dropout),
                             nn.Linear(h, self.classes))

    def encode(self, record):
        import torch

        return torch.tensor(record["x"], dtype=torch.float32), int(record["label"])

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        logits = module(x)
        if module.training:
            self.train_calls += 1
            self.seen_labels.extend(y.tolist())
            if self.train_calls == self.options.fault_at:
                if self.options.fault in ("inf_grad", "nan_grad"):
                    bad = float("inf") if self.options.fault == "inf_grad" else float("nan")
                    logits.register_hook(lambda g: g * bad)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        if module.training and self.train_calls == self.options.fault_at and self.options.fault == "nan_loss":
            loss = loss * float("nan")
        if module.training and self.train_calls >= self.options.fault_at and self.options.fault == "nan_loss_from":
            loss = loss * float("nan")  # diverged for good: every step from fault_at on
        return privet.StepOutput(loss, y.shape[0], logits, y)

    def example_inputs(self, batch):
        return (batch[0],)


class Tokens(privet.Source):
    """Integer sequences of random length in [``min_len``, ``max_len``]: a toy language."""

    @attrs.define(frozen=True)
    class Options:
        n: int = 256
        vocab: int = 12
        min_len: int = 2
        max_len: int = 24
        seed: int = 0

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard("tokens")]

    def files(self) -> list[str]:
        return []

    def read(self, shard: privet.Shard) -> Iterator[privet.Record]:
        import numpy as np

        o = self.options
        rng = np.random.default_rng(o.seed)
        for i in range(o.n):
            length = int(rng.integers(o.min_len, o.max_len + 1))
            start = int(rng.integers(1, o.vocab))
            # a mostly-counting sequence, so there is something to learn
            tokens = [1 + (start + k) % (o.vocab - 1) for k in range(length)]
            yield {"tokens": tokens, "id": i}


class TinyLM(privet.Model):
    """Next-token prediction over padded batches; the loss is summed over real tokens only.

    ``count`` is the number of predicted (non-padding) tokens, so micro-batches of
    different padding weigh exactly as much as their tokens.
    """

    task = "lm"
    PAD = 0

    @attrs.define(frozen=True)
    class Options:
        vocab: int = 12
        dim: int = 8

    def build(self):
        from torch import nn

        o = self.options
        return nn.Sequential(nn.Embedding(o.vocab, o.dim, padding_idx=self.PAD), nn.Tanh(),
                             nn.Linear(o.dim, o.vocab))

    def encode(self, record):
        import torch

        return torch.tensor(record["tokens"], dtype=torch.long)

    def collate(self, items):
        from torch.nn.utils.rnn import pad_sequence

        return pad_sequence(items, batch_first=True, padding_value=self.PAD)

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = module(inputs)
        mask = targets != self.PAD
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=self.PAD, reduction="sum")
        return privet.StepOutput(loss, mask.sum())

    def example_inputs(self, batch):
        return (batch[:, :-1],)


class DropLabel(privet.Cleaner):
    """Filters out records of one label on purpose (counted, but not as bad records)."""

    @attrs.define(frozen=True)
    class Options:
        label: int = 0
        how: Literal["none", "drop_record"] = "drop_record"

    def clean(self, record):
        if int(record["label"]) != self.options.label:
            return record
        if self.options.how == "none":
            return None
        raise privet.DropRecord("unwanted_label", f"label {self.options.label}", bad=False)


class Jitter(privet.Augmenter):
    """Adds Gaussian noise of ``sigma`` to ``x``, drawn from the per-sample generator."""

    @attrs.define(frozen=True)
    class Options:
        sigma: float = 0.1

    def augment(self, record, rng):
        noise = rng.normal(0.0, self.options.sigma, size=len(record["x"]))
        return {**record, "x": [float(v + e) for v, e in zip(record["x"], noise)]}


@privet.hookimpl
def register_sources(register):
    register("kit.skewed", Skewed)
    register("kit.tokens", Tokens)


@privet.hookimpl
def register_models(register):
    register("kit.probe", Probe)
    register("kit.lm", TinyLM)


@privet.hookimpl
def register_cleaners(register):
    register("kit.drop_label", DropLabel)


@privet.hookimpl
def register_augmenters(register):
    register("kit.jitter", Jitter)
