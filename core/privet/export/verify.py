"""Checking an artifact against the eager model, and measuring quality on validation.

Two checks per artifact: its outputs match the eager module's on the example inputs it
was exported with and on a batch of real validation examples (of another batch size,
which exercises the dynamic batch axis), within :data:`TOLERANCE`; and, for quantized
artifacts, the task metrics on validation before and after, since int8 outputs are not
meant to match elementwise.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..components import Model, Record, StepOutput
from ..errors import DropRecord, ExportError
from .exporters import Runner

#: fp32 artifacts must match the eager module within ``|a - e| <= atol + rtol * |e|``.
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}


@attrs.define
class Batch:
    """One encoded batch: the named numpy feed, the collated batch and its records."""

    feed: dict[str, Any]
    batch: Any
    records: list[Record]


def encode_batch(model: Model, records: list[Record]) -> Batch | None:
    """Encode and collate cached examples (skipping dropped ones); None if none is left."""
    import numpy as np

    items, kept = [], []
    for record in records:
        try:
            items.append(model.encode(dict(record)))
            kept.append(record)
        except DropRecord:
            continue
    if not items:
        return None
    batch = model.collate(items)
    inputs = model.example_inputs(batch)
    names = model.input_names()
    if len(names) != len(inputs):
        raise ExportError(f"model {model.name!r}: input_names() gives {len(names)} names for "
                          f"{len(inputs)} example inputs; make them agree")
    feed = {n: (x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x))
            for n, x in zip(names, inputs)}
    return Batch(feed, batch, kept)


def compare(expected: list[Any], actual: list[Any], *, atol: float = TOLERANCE["atol"],
            rtol: float = TOLERANCE["rtol"]) -> dict[str, Any]:
    """Elementwise comparison of two output lists: ``ok``, ``max_abs_diff`` and why not."""
    import numpy as np

    if len(expected) != len(actual):
        return {"ok": False, "max_abs_diff": None,
                "error": f"{len(actual)} outputs, the eager model gives {len(expected)}"}
    worst = 0.0
    ok = True
    for i, (e, a) in enumerate(zip(expected, actual)):
        e, a = np.asarray(e), np.asarray(a)
        if e.shape != a.shape:
            return {"ok": False, "max_abs_diff": None,
                    "error": f"output {i} has shape {list(a.shape)}, eager gives {list(e.shape)}"}
        if e.size == 0:
            continue
        ef, af = e.astype(np.float64), a.astype(np.float64)
        finite = np.isfinite(ef)
        if not np.array_equal(finite, np.isfinite(af)):
            return {"ok": False, "max_abs_diff": None,
                    "error": f"output {i} is non-finite where the eager output is not (or vice versa)"}
        diff = np.abs(ef - af)[finite]
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        ok = ok and bool(np.allclose(af, ef, atol=atol, rtol=rtol, equal_nan=True))
    return {"ok": ok, "max_abs_diff": worst}


def eager_outputs(module: Any, feed: dict[str, Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        out = module(*[torch.as_tensor(v) for v in feed.values()])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


class Evaluator:
    """Task metrics on validation batches, for the eager module and for any runner."""

    def __init__(self, model: Model, module: Any, batches: list[Batch]) -> None:
        import torch

        self.model = model
        self.batches = batches
        self.steps: list[StepOutput] = []
        with torch.no_grad():
            for b in batches:
                self.steps.append(model.step(module, b.batch))

    @property
    def count(self) -> int:
        return sum(len(b.records) for b in self.batches)

    def metrics(self, runner: Runner | None = None) -> dict[str, Any]:
        """``accuracy``/``f1`` or ``mae``/``rmse`` over the batches (``runner``: an artifact)."""
        import torch


        acc = self.model.metrics("val")
        for b, step in zip(self.batches, self.steps):
            if step.predictions is None or step.targets is None:
                return {}
            pred = step.predictions
            if runner is not None:
                pred = torch.as_tensor(runner(b.feed)[0])
                if tuple(pred.shape) != tuple(step.predictions.shape):
                    return {"note": "the artifact's first output is not the model's predictions; "
                                    "no metric computed"}
            acc.update(StepOutput(torch.zeros(()), step.count, pred.float()
                                  if pred.is_floating_point() else pred, step.targets))
        out = {k.split("/", 1)[1]: round(v, 6) for k, v in acc.compute().items()
               if not k.endswith("/loss") and math.isfinite(v)}
        return out

    def agreement(self, runner: Runner) -> dict[str, Any]:
        """How close a (quantized) artifact stays to the eager predictions."""
        import numpy as np

        if not self.batches:
            return {}
        worst, same, total = 0.0, 0, 0
        for b, step in zip(self.batches, self.steps):
            out = np.asarray(runner(b.feed)[0], dtype=np.float64)
            ref = (step.predictions.detach().cpu().numpy().astype(np.float64)
                   if step.predictions is not None else None)
            if ref is None or ref.shape != out.shape:
                return {}
            worst = max(worst, float(np.abs(out - ref).max()) if out.size else 0.0)
            if self.model.task_definition().name == "classification":
                same += int((out.argmax(-1) == ref.argmax(-1)).sum())
                total += int(np.prod(out.shape[:-1]))
        result: dict[str, Any] = {"max_abs_diff": worst}
        if total:
            result["same_class"] = round(same / total, 6)
        return result
