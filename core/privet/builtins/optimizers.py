"""Built-in optimizers (torch.optim), as components registered like any plugin's.

Their options are the keys written next to ``name`` and ``lr`` under
``train.optimizer`` (``{name: adamw, lr: 0.003, weight_decay: 0.01}``). Defaults are
torch's, except ``weight_decay``, which is 0 for all three so that switching optimizer
changes one thing only.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..components import Optimizer
from ..hookspecs import hookimpl
from ..validators import OptionValueError


def _non_negative(_instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise OptionValueError(f"{attribute.name} must be 0 or more, got {value}", attribute.name)


def _positive(_instance: Any, attribute: Any, value: float) -> None:
    if not value > 0:
        raise OptionValueError(f"{attribute.name} must be above 0, got {value}", attribute.name)


def _betas(_instance: Any, attribute: Any, value: tuple[float, float]) -> None:
    if not all(0.0 <= b < 1.0 for b in value):
        raise OptionValueError(f"betas must be two numbers in [0, 1), got {list(value)}", "betas")


@attrs.define(frozen=True)
class AdamOptions:
    """Options shared by Adam and AdamW."""

    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas)
    eps: float = attrs.field(default=1e-8, validator=_positive)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter): the usual first choice."""

    Options = AdamOptions

    def build(self, params: Any, lr: float) -> Any:
        import torch

        o = self.options
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay)


class Adam(Optimizer):
    """Adam; ``weight_decay`` is added to the gradient (L2), unlike AdamW."""

    Options = AdamOptions

    def build(self, params: Any, lr: float) -> Any:
        import torch

        o = self.options
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""

    @attrs.define(frozen=True)
    class Options:
        momentum: float = attrs.field(default=0.0, validator=_non_negative)
        nesterov: bool = False
        weight_decay: float = attrs.field(default=0.0, validator=_non_negative)

        def __attrs_post_init__(self) -> None:
            if self.nesterov and self.momentum <= 0:
                raise OptionValueError("nesterov needs a momentum above 0", "nesterov")

    def build(self, params: Any, lr: float) -> Any:
        import torch

        o = self.options
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)


@hookimpl
def register_optimizers(register):
    register("adamw", AdamW)
    register("adam", Adam)
    register("sgd", SGD)
