"""The ``dp-sgd`` privacy mechanism: its options, validated when the pipeline is loaded.

The component only carries the options; :mod:`privet_dp.wrap` applies them in the
plugin's ``wrap_training`` hook.
"""

from __future__ import annotations

from typing import Literal, Optional

import attrs

import privet
from privet import OptionValueError, positive


def _delta(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise OptionValueError(f"{attribute.name} must be between 0 and 1 (exclusive), got {value}",
                               attribute.name)


@attrs.define(frozen=True)
class DPSGDOptions:
    """``privacy:`` keys of ``mechanism: dp-sgd``.

    Give ``target_epsilon`` (the noise multiplier is then computed from the planned
    steps), ``noise_multiplier`` (the epsilon spent is reported), or both (the noise is
    fixed and training stops cleanly when the next step would exceed the target).
    """

    target_epsilon: Optional[float] = attrs.field(default=None, validator=positive)
    delta: float = attrs.field(default=1e-5, validator=_delta)
    max_grad_norm: float = attrs.field(default=1.0, validator=positive)
    accountant: Literal["rdp", "prv"] = "rdp"
    noise_multiplier: Optional[float] = attrs.field(default=None, validator=positive)
    poisson_sampling: bool = True
    #: hooks: Opacus' per-example gradients; functorch: the same through torch.func;
    #: ghost: Opacus' ghost clipping (norms without per-example gradients; needs the
    #: model's StepOutput.per_example). See ghost.py and docs/plugins/dp.md.
    grad_sample_mode: Literal["hooks", "functorch", "ghost"] = "hooks"
    #: secret: Poisson draws and noise from a seed drawn from the OS and kept in the
    #: checkpoint; seeded: from the pipeline's seed (repeatable runs). See secrecy.py.
    randomness: Literal["secret", "seeded"] = "secret"

    def __attrs_post_init__(self) -> None:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise OptionValueError("set target_epsilon (the noise is then computed from the planned "
                                   "steps), noise_multiplier, or both", "target_epsilon")


class DPSGD(privet.PrivacyMechanism):
    """DP-SGD through Opacus: per-example clipping, Gaussian noise, Poisson sampling.

    Abadi et al. 2016, with an RDP or PRV accountant whose epsilon is checkpointed,
    logged and reported; see docs/plugins/dp.md.
    """

    Options = DPSGDOptions


__all__ = ["DPSGD", "DPSGDOptions"]
