"""Metrics by task, accumulated on the device and read out once per evaluation."""

from __future__ import annotations

import math
from typing import Any

from ..components import StepOutput


class MetricAccumulator:
    """Sums over batches; :meth:`compute` turns them into ``prefix/name`` floats.

    Everything stays a device tensor until :meth:`compute`, so accumulating costs no
    host synchronisation.
    """

    def __init__(self, task: str, prefix: str) -> None:
        self.task = task
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        #: each batch's (or step's) loss, summed at :meth:`compute`: an append per step
        #: instead of two tensor ops
        self.losses: list[Any] = []
        self.loss_sum: Any = 0.0
        self.count: Any = 0
        self.confusion: Any = None
        self.abs_err: Any = 0.0
        self.sq_err: Any = 0.0
        self.smape: Any = 0.0
        self.n_values: Any = 0

    def update(self, out: StepOutput) -> None:
        import torch

        self.add_loss(out.loss_sum, out.count)
        if out.predictions is None or out.targets is None:
            return
        pred = out.predictions.detach()
        target = out.targets.detach()
        if self.task == "classification":
            classes = pred.shape[-1]
            idx = target.long().reshape(-1) * classes + pred.argmax(-1).reshape(-1)
            counts = torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)
            self.confusion = counts if self.confusion is None else self.confusion + counts
        elif self.task in ("regression", "forecast"):
            pred = pred.float().reshape(target.shape) if pred.numel() == target.numel() else pred.float()
            diff = pred - target.float()
            self.abs_err = self.abs_err + diff.abs().sum()
            self.sq_err = self.sq_err + (diff * diff).sum()
            denom = (pred.abs() + target.float().abs()).clamp_min(1e-8)
            self.smape = self.smape + (2 * diff.abs() / denom).sum()
            self.n_values = self.n_values + target.numel()

    def add_loss(self, loss_sum: Any, count: Any) -> None:
        """A summed loss and its item count. Training calls only this, once per optimizer
        step: per-step confusion matrices would cost tens of microseconds, a visible
        share of a small model's step, so task metrics are computed on validation."""
        self.losses.append(loss_sum.detach())
        self.count = self.count + count

    def _fold_losses(self) -> None:
        if self.losses:
            import torch

            self.loss_sum = self.loss_sum + torch.stack(self.losses).float().sum()
            self.losses = []

    def first_nonfinite(self) -> int | None:
        """Position (0-based, among the losses added since :meth:`reset`) of the first
        non-finite one, or None. One host sync for all the steps of a log interval."""
        import torch

        if not self.losses:
            return None
        finite = torch.isfinite(torch.stack(self.losses).float())
        if bool(finite.all()):
            return None
        return int((~finite).nonzero()[0, 0])

    def all_reduce(self) -> None:
        """Sum the accumulators over all ranks (a no-op outside a distributed run)."""
        import torch
        import torch.distributed as dist

        self._fold_losses()
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name in ("loss_sum", "count", "abs_err", "sq_err", "smape", "n_values", "confusion"):
            value = getattr(self, name)
            if value is None:
                continue
            t = value.clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            dist.all_reduce(t)
            setattr(self, name, t)

    def compute(self) -> dict[str, float]:
        self._fold_losses()
        p = self.prefix
        count = float(self.count)
        if count == 0:
            return {}
        loss = float(self.loss_sum) / count
        out = {f"{p}/loss": loss}
        if self.task == "lm":
            out[f"{p}/perplexity"] = math.exp(min(loss, 50.0))
        if self.task == "classification" and self.confusion is not None:
            cm = self.confusion.double()
            tp = cm.diag()
            total = float(cm.sum())
            out[f"{p}/accuracy"] = float(tp.sum()) / total if total else 0.0
            support = cm.sum(1)
            predicted = cm.sum(0)
            present = (support + predicted) > 0
            f1 = (2 * tp) / (support + predicted).clamp_min(1)
            out[f"{p}/f1"] = float(f1[present].mean()) if bool(present.any()) else 0.0
        if self.task in ("regression", "forecast") and float(self.n_values) > 0:
            n = float(self.n_values)
            out[f"{p}/mae"] = float(self.abs_err) / n
            out[f"{p}/rmse"] = math.sqrt(float(self.sq_err) / n)
            if self.task == "forecast":
                out[f"{p}/smape"] = float(self.smape) / n
        return out
