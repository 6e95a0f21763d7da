"""Tasks and their metrics, accumulated on the device and read out once per evaluation.

A :class:`Task` says what a model's predictions mean: which metrics they give (beyond
the loss every model has) and how the outputs of an exported model become answers in
``privet predict``. The core knows the built-in tasks by name (:data:`TASKS`); a plugin
adds its own by subclassing :class:`Task` and naming the class in its model's ``task``,
without touching the core.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from ..components import StepOutput
from ..errors import PluginError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch


class Task:
    """What a model predicts: its metrics and its default post-processing.

    Metrics are kept as *sums* (``new_sums``, then ``update`` per batch), so that batches
    and ranks add up exactly and nothing leaves the device until ``compute`` is called
    once per evaluation. Every entry of the sums dict must be a number or a tensor that
    is correct when summed over ranks (``None`` means "nothing yet" and is skipped).
    """

    #: The name a model gives in ``task`` for a built-in task.
    name: ClassVar[str] = ""
    #: Metric names besides ``loss``, as :meth:`compute` returns them (no split prefix).
    metrics: ClassVar[tuple[str, ...]] = ()

    def metric_names(self) -> list[str]:
        """Every metric an evaluation may report, without the ``val/`` prefix."""
        return ["loss", *self.metrics]

    def new_sums(self) -> dict[str, Any]:
        """Fresh accumulators for one evaluation."""
        return {}

    def update(self, sums: dict[str, Any], predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch's predictions and targets (detached tensors) to ``sums``."""

    def compute(self, sums: dict[str, Any], loss: float) -> dict[str, float]:
        """The metrics (unprefixed names) from the summed accumulators and the mean loss."""
        return {}

    def postprocess(self, model: Any, outputs: list[np.ndarray],
                    records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One JSON-able answer per record from the exported model's outputs (batch first)."""
        import numpy as np

        return [{"outputs": [np.asarray(o)[i].tolist() for o in outputs]} for i in range(len(records))]


class Classification(Task):
    """Logits over classes: accuracy and macro F1 from a confusion matrix; softmax answers."""

    name = "classification"
    metrics = ("accuracy", "f1")

    def new_sums(self) -> dict[str, Any]:
        return {"confusion": None}

    def update(self, sums: dict[str, Any], predictions: torch.Tensor, targets: torch.Tensor) -> None:
        import torch

        classes = predictions.shape[-1]
        idx = targets.long().reshape(-1) * classes + predictions.argmax(-1).reshape(-1)
        counts = torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)
        sums["confusion"] = counts if sums["confusion"] is None else sums["confusion"] + counts

    def compute(self, sums: dict[str, Any], loss: float) -> dict[str, float]:
        if sums["confusion"] is None:
            return {}
        cm = sums["confusion"].double()
        tp = cm.diag()
        total = float(cm.sum())
        support = cm.sum(1)
        predicted = cm.sum(0)
        present = (support + predicted) > 0
        f1 = (2 * tp) / (support + predicted).clamp_min(1)
        return {"accuracy": float(tp.sum()) / total if total else 0.0,
                "f1": float(f1[present].mean()) if bool(present.any()) else 0.0}

    def postprocess(self, model: Any, outputs: list[np.ndarray],
                    records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``{"label", "probabilities"}``: softmax of output 0, labels from ``class_names()``."""
        import numpy as np

        logits = np.asarray(outputs[0]).reshape(len(records), -1).astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        names = model.class_names()
        out = []
        for row in probs:
            k = int(row.argmax())
            out.append({"label": names[k] if names else k,
                        "probabilities": [round(float(p), 6) for p in row]})
        return out


class Regression(Task):
    """Numbers (one or several per example): MAE and RMSE; the predicted values as answers."""

    name = "regression"
    metrics = ("mae", "rmse")

    def new_sums(self) -> dict[str, Any]:
        return {"abs_err": 0.0, "sq_err": 0.0, "smape": 0.0, "n_values": 0}

    def update(self, sums: dict[str, Any], predictions: torch.Tensor, targets: torch.Tensor) -> None:
        pred = (predictions.float().reshape(targets.shape) if predictions.numel() == targets.numel()
                else predictions.float())
        diff = pred - targets.float()
        sums["abs_err"] = sums["abs_err"] + diff.abs().sum()
        sums["sq_err"] = sums["sq_err"] + (diff * diff).sum()
        denom = (pred.abs() + targets.float().abs()).clamp_min(1e-8)
        sums["smape"] = sums["smape"] + (2 * diff.abs() / denom).sum()
        sums["n_values"] = sums["n_values"] + targets.numel()

    def compute(self, sums: dict[str, Any], loss: float) -> dict[str, float]:
        n = float(sums["n_values"])
        if n <= 0:
            return {}
        out = {"mae": float(sums["abs_err"]) / n, "rmse": math.sqrt(float(sums["sq_err"]) / n)}
        if "smape" in self.metrics:
            out["smape"] = float(sums["smape"]) / n
        return out

    def postprocess(self, model: Any, outputs: list[np.ndarray],
                    records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``{"prediction"}``: output 0, a number or a list per record."""
        import numpy as np

        rows = np.asarray(outputs[0]).reshape(len(records), -1)
        return [{"prediction": float(r[0]) if r.size == 1 else [float(v) for v in r]} for r in rows]


class Forecast(Regression):
    """Future values of a series: MAE, RMSE and sMAPE."""

    name = "forecast"
    metrics = ("mae", "rmse", "smape")


class LanguageModel(Task):
    """Next-token prediction: perplexity from the mean token loss; raw outputs as answers."""

    name = "lm"
    metrics = ("perplexity",)

    def compute(self, sums: dict[str, Any], loss: float) -> dict[str, float]:
        return {"perplexity": math.exp(min(loss, 50.0))}


#: The built-in tasks by name; a model's ``task`` may also be a :class:`Task` subclass.
TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Regression, Forecast, LanguageModel)}


def get_task(task: str | Task | type[Task]) -> Task:
    """The :class:`Task` a model's ``task`` attribute stands for (a name, class or instance)."""
    if isinstance(task, Task):
        return task
    if isinstance(task, type) and issubclass(task, Task):
        return task()
    if isinstance(task, str) and task in TASKS:
        return TASKS[task]()
    raise PluginError(f"unknown model task {task!r}; use one of {', '.join(sorted(TASKS))} or a "
                      f"privet.Task subclass")


class MetricAccumulator:
    """Sums over batches; :meth:`compute` turns them into ``prefix/name`` floats.

    The loss is the same for every task; the rest comes from the :class:`Task`.
    Everything stays a device tensor until :meth:`compute`, so accumulating costs no
    host synchronisation.
    """

    def __init__(self, task: str | Task | type[Task], prefix: str) -> None:
        self.task = get_task(task)
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        #: each batch's (or step's) loss, summed at :meth:`compute`: an append per step
        #: instead of two tensor ops
        self.losses: list[Any] = []
        self.loss_sum: Any = 0.0
        self.count: Any = 0
        self.sums: dict[str, Any] = self.task.new_sums()

    def update(self, out: StepOutput) -> None:
        self.add_loss(out.loss_sum, out.count)
        if out.predictions is None or out.targets is None:
            return
        self.task.update(self.sums, out.predictions.detach(), out.targets.detach())

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
        import torch.distributed as dist

        self._fold_losses()
        if not (dist.is_available() and dist.is_initialized()):
            return
        self.loss_sum, self.count = _all_reduce(self.loss_sum), _all_reduce(self.count)
        for name, value in self.sums.items():
            if value is not None:
                self.sums[name] = _all_reduce(value)

    def compute(self) -> dict[str, float]:
        self._fold_losses()
        count = float(self.count)
        if count == 0:
            return {}
        loss = float(self.loss_sum) / count
        out = {"loss": loss, **self.task.compute(self.sums, loss)}
        return {f"{self.prefix}/{name}": value for name, value in out.items()}


def _all_reduce(value: Any) -> Any:
    """The sum of ``value`` (a number or tensor) over all ranks, as a tensor."""
    import torch
    import torch.distributed as dist

    t = value.clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    dist.all_reduce(t)
    return t
