"""Built-in learning-rate schedulers (torch.optim.lr_scheduler), as components."""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

from ..components import Scheduler
from ..hookspecs import hookimpl


class Cosine(Scheduler):
    """Cosine annealing from the base LR to ``min_lr`` over the whole run, per step."""

    interval = "step"

    @attrs.define(frozen=True)
    class Options:
        min_lr: float = 0.0

    def build(self, optimizer: Any, total_steps: int, steps_per_epoch: int) -> Any:
        from torch.optim.lr_scheduler import CosineAnnealingLR

        return CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=self.options.min_lr)


def _warmup_lambda(warmup: int, total: int, shape: str, min_ratio: float):
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if shape == "linear":
            return max(min_ratio, 1.0 - progress * (1.0 - min_ratio))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class LinearWarmup(Scheduler):
    """Linear warmup for ``warmup_steps`` (or ``warmup_ratio`` of the run), then linear decay."""

    interval = "step"
    shape = "linear"

    @attrs.define(frozen=True)
    class Options:
        warmup_steps: int = 0
        warmup_ratio: float = 0.0
        min_lr_ratio: float = 0.0

    def build(self, optimizer: Any, total_steps: int, steps_per_epoch: int) -> Any:
        from torch.optim.lr_scheduler import LambdaLR

        warmup = self.options.warmup_steps or int(self.options.warmup_ratio * total_steps)
        return LambdaLR(optimizer, _warmup_lambda(warmup, total_steps, self.shape,
                                                  self.options.min_lr_ratio))


class CosineWarmup(LinearWarmup):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the base LR."""

    shape = "cosine"


class Step(Scheduler):
    """Multiply the LR by ``gamma`` every ``step_size`` epochs."""

    interval = "epoch"

    @attrs.define(frozen=True)
    class Options:
        step_size: int = 1
        gamma: float = 0.1

    def build(self, optimizer: Any, total_steps: int, steps_per_epoch: int) -> Any:
        from torch.optim.lr_scheduler import StepLR

        return StepLR(optimizer, step_size=self.options.step_size, gamma=self.options.gamma)


class Plateau(Scheduler):
    """Reduce the LR by ``factor`` when ``monitor`` stops improving for ``patience`` epochs."""

    interval = "metric"

    @attrs.define(frozen=True)
    class Options:
        monitor: str = "val/loss"
        mode: Literal["min", "max"] = "min"
        factor: float = 0.1
        patience: int = 2
        min_lr: float = 0.0

    @property
    def monitor(self) -> str:  # type: ignore[override]
        return self.options.monitor

    def build(self, optimizer: Any, total_steps: int, steps_per_epoch: int) -> Any:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        o = self.options
        return ReduceLROnPlateau(optimizer, mode=o.mode, factor=o.factor, patience=o.patience,
                                 min_lr=o.min_lr)


class OneCycle(Scheduler):
    """One-cycle policy (Smith): warm up to ``max_lr`` then anneal, per step."""

    interval = "step"

    @attrs.define(frozen=True)
    class Options:
        max_lr: float = 0.01
        pct_start: float = 0.3

    def build(self, optimizer: Any, total_steps: int, steps_per_epoch: int) -> Any:
        from torch.optim.lr_scheduler import OneCycleLR

        return OneCycleLR(optimizer, max_lr=self.options.max_lr, total_steps=max(1, total_steps),
                          pct_start=self.options.pct_start)


@hookimpl
def register_schedulers(register):
    register("cosine", Cosine)
    register("linear_warmup", LinearWarmup)
    register("cosine_warmup", CosineWarmup)
    register("step", Step)
    register("plateau", Plateau)
    register("onecycle", OneCycle)
