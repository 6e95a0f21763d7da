"""A tiny in-house plugin the core tests load with ``--plugin-dir`` or ``load_path``.

It provides what a whole run needs and nothing more: synthetic two-class records, a
two-layer perceptron, a starter pipeline (``privet init tiny``) and a launcher command
(``privet tiny-hello``). Like any plugin module it must not import torch at import time.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import attrs

import privet

STARTER = """\
name: tiny
seed: 0
data:
  source: {name: tiny.synthetic, options: {n: 64}}
  split: {method: random, val: 0.25}
model: {name: tiny.mlp, options: {hidden: 8}}
train: {epochs: 1, batch_size: 16, device: cpu}
"""


class Synthetic(privet.Source):
    """Synthetic two-class records: ``x`` is two floats, ``label`` is ``x0 + x1 > 0``."""

    @attrs.define(frozen=True)
    class Options:
        n: int = 64
        seed: int = 0
        #: Yield a BadRecord in place of every N-th record (0: never).
        bad_every: int = 0

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard(f"synthetic-{self.options.seed}")]

    def files(self) -> list[str]:
        return []  # generated, not read from files

    def read(self, shard: privet.Shard) -> Iterator[privet.Record | privet.BadRecord]:
        rng = random.Random(self.options.seed)
        every = self.options.bad_every
        for i in range(self.options.n):
            x = [rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)]
            if every and (i + 1) % every == 0:
                yield privet.BadRecord("synthetic_bad", f"{shard.path}:{i + 1}")
                continue
            yield {"x": x, "label": int(x[0] + x[1] > 0)}


class TinyMLP(privet.Model):
    """Two-layer perceptron over the two floats of ``x``; classes learned by ``fit``."""

    task = "classification"

    @attrs.define(frozen=True)
    class Options:
        hidden: int = 8
        #: Raise in the N-th call of ``step`` (0: never), to exercise on_run_error.
        fail_at_step: int = 0

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.classes: list[int] = []
        self.calls = 0

    def fit(self, records: Any) -> None:
        self.classes = sorted({int(r["label"]) for r in records})

    def state_dict(self) -> dict[str, Any]:
        return {"classes": self.classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classes = [int(c) for c in state["classes"]]

    def build(self) -> Any:
        import torch

        hidden = self.options.hidden
        return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(hidden, max(2, len(self.classes))))

    def encode(self, record: privet.Record) -> Any:
        import torch

        return (torch.tensor(record["x"], dtype=torch.float32),
                torch.tensor(self.classes.index(int(record["label"])), dtype=torch.int64))

    def step(self, module: Any, batch: Any) -> privet.StepOutput:
        import torch.nn.functional as F

        self.calls += 1
        if self.options.fail_at_step and self.calls >= self.options.fail_at_step:
            raise RuntimeError("tiny.mlp failed on purpose")
        x, y = batch
        logits = module(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        return privet.StepOutput(loss, int(y.shape[0]), logits.detach(), y)

    def example_inputs(self, batch: Any) -> tuple[Any, ...]:
        return (batch[0],)

    def input_names(self) -> list[str]:
        return ["x"]

    def output_names(self) -> list[str]:
        return ["logits"]


@privet.hookimpl
def register_sources(register):
    register("tiny.synthetic", Synthetic)


@privet.hookimpl
def register_models(register):
    register("tiny.mlp", TinyMLP)


@privet.hookimpl
def starter_pipeline(modality):
    return STARTER if modality == "tiny" else None


@privet.hookimpl
def register_commands(cli):
    import click

    @cli.command("tiny-hello")
    @click.argument("who", default="world")
    def tiny_hello(who: str) -> None:
        """Say hello (a command added by the tiny plugin)."""
        click.echo(f"hello {who} from tiny")
