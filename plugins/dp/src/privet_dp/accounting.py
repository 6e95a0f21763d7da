"""Privacy accounting: Opacus' accountants, the noise for a target, the budget in steps.

Everything here is Opacus: ``create_accountant`` (RDP or PRV), ``get_noise_multiplier``
and the accountant's ``get_epsilon``. What this module adds is bookkeeping: the spent
epsilon reported from the accountant's history (which is checkpointed), and the number
of steps a fixed noise allows under a target epsilon, found once before training so the
per-step stop check is a comparison.

RDP -> (epsilon, delta): Opacus' ``privacy_analysis.get_privacy_spent`` uses the
conversion of Balle et al. 2020 ("Hypothesis testing interpretations and Renyi
differential privacy", Theorem 21): ``eps = rdp - (log(delta) + log(alpha)) / (alpha - 1)
+ log((alpha - 1) / alpha)``, minimised over Opacus' default orders. It is tighter than
Mironov's ``rdp + log(1/delta) / (alpha - 1)``; ``plugins/dp/tests/test_dp_accounting.py`` pins it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

#: binary search precision of Opacus' get_noise_multiplier (its default)
EPSILON_TOLERANCE = 0.01


def epsilon_for(accountant_name: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a history of (noise multiplier, sample rate, steps) under ``delta``.

    RDP: exactly what ``RDPAccountant.get_epsilon`` computes (the sum over the history of
    ``compute_rdp(q, sigma, steps, orders)``, then ``get_privacy_spent``), with the RDP of
    one step cached per (sigma, q): ``compute_rdp`` is that vector times the steps, and
    its fractional orders cost ~0.4 s a call, too much to log every interval.
    """
    if not history or all(steps == 0 for _, _, steps in history):
        return 0.0
    if accountant_name == "rdp":
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = sum(_rdp_per_step(float(s), float(q)) * int(n) for s, q, n in history)
        eps, _alpha = get_privacy_spent(orders=_rdp_orders(), rdp=rdp, delta=delta)
        return float(eps)
    accountant = create_accountant(mechanism=accountant_name)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta=delta))


def _rdp_orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return RDPAccountant.DEFAULT_ALPHAS


@functools.lru_cache(maxsize=64)
def _rdp_per_step(noise: float, sample_rate: float) -> Any:
    from opacus.accountants.analysis.rdp import compute_rdp

    return compute_rdp(q=sample_rate, noise_multiplier=noise, steps=1, orders=_rdp_orders())


def noise_for_target(accountant_name: str, target_epsilon: float, delta: float,
                     sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to Opacus' tolerance) that keeps ``steps`` steps at
    ``sample_rate`` within ``target_epsilon``."""
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=max(1, steps),
                                      accountant=accountant_name,
                                      epsilon_tolerance=EPSILON_TOLERANCE))


def budget_steps(accountant_name: str, target_epsilon: float, delta: float, noise: float,
                 sample_rate: float, planned: int) -> int:
    """How many steps stay within ``target_epsilon`` (at most ``planned``): the planned
    steps if they fit, else the largest count that does (binary search, epsilon being
    monotone in the number of steps)."""
    if epsilon_for(accountant_name, [(noise, sample_rate, planned)], delta) <= target_epsilon:
        return planned
    lo, hi = 0, planned  # eps(lo) <= target < eps(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epsilon_for(accountant_name, [(noise, sample_rate, mid)], delta) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo


class Accountant:
    """Opacus' accountant for one run, with what the report and the checkpoint need.

    ``state_dict``/``load_state_dict`` are the accountant's own (its history: plain
    tuples, loadable with ``weights_only=True``); :meth:`epsilon` is cached per step count.
    """

    #: PRV: seconds between two evaluations for logging (one costs ~0.5 s; RDP is cached)
    PRV_LOG_EVERY_S = 30.0

    def __init__(self, name: str, delta: float) -> None:
        self.name = name
        self.delta = delta
        self.opacus = create_accountant(mechanism=name)
        self._cached: tuple[int, float] | None = None
        self._logged_at = float("-inf")

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self.opacus.history)

    def epsilon(self) -> float:
        steps = self.steps
        if self._cached is None or self._cached[0] != steps:
            self._cached = (steps, epsilon_for(self.name, self.opacus.history, self.delta))
        return self._cached[1]

    def for_log(self) -> dict[str, float]:
        """``{"privacy/epsilon": spent}`` for TensorBoard: every call with RDP; with PRV at
        most every ``PRV_LOG_EVERY_S`` seconds (``{}`` in between), so that logging never
        costs more than a few percent of training. The report always has the exact value."""
        if self.name != "rdp" and time.monotonic() - self._logged_at < self.PRV_LOG_EVERY_S:
            return {}
        self._logged_at = time.monotonic()
        return {"privacy/epsilon": self.epsilon()}

    def hook(self, sample_rate: float) -> Any:
        """Opacus' optimizer step hook: one accountant step per noisy optimizer step, at
        ``sample_rate`` times the optimizer's ``accumulated_iterations`` (always 1 here:
        the micro-batches of a step are clipped and accumulated by virtual steps)."""
        return self.opacus.get_optimizer_hook_fn(sample_rate=sample_rate)

    def state_dict(self) -> dict[str, Any]:
        state = self.opacus.state_dict()
        state["history"] = [tuple(h) for h in state["history"]]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opacus.load_state_dict({**state, "history": [tuple(h) for h in state["history"]]})
        self._cached = None


__all__ = ["Accountant", "budget_steps", "epsilon_for", "noise_for_target"]
