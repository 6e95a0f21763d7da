"""Accounting: Opacus' known answer through the path the report uses, the conversion it
rests on pinned, and the noise/budget arithmetic the plugin adds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privet_dp.accounting import Accountant, budget_steps, epsilon_for, noise_for_target


def test_rdp_known_answer_through_the_report_path():
    # Opacus' own test value: sigma 1.5, q 0.04, 2250 steps, delta 1e-5
    accountant = Accountant("rdp", delta=1e-5)
    hook = accountant.hook(sample_rate=0.04)

    class Optimizer:  # what Opacus' step hook reads from a DPOptimizer
        noise_multiplier = 1.5
        accumulated_iterations = 1

    for _ in range(2250):
        hook(Optimizer)

    assert accountant.steps == 2250
    assert accountant.epsilon() == pytest.approx(7.32911117143, abs=1e-6)


def test_rdp_conversion_is_balle_et_al_2020_over_opacus_default_orders():
    """Pinned: eps = min_a rdp(a) - (log(delta) + log(a)) / (a - 1) + log((a - 1) / a)."""
    from opacus.accountants.analysis.rdp import compute_rdp
    from opacus.accountants.rdp import RDPAccountant

    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = compute_rdp(q=0.04, noise_multiplier=1.5, steps=2250, orders=orders)
    delta = 1e-5
    balle = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    mironov = rdp + math.log(1 / delta) / (orders - 1)

    reported = epsilon_for("rdp", [(1.5, 0.04, 2250)], delta)
    assert reported == pytest.approx(float(np.nanmin(balle)), abs=1e-9)
    assert reported < float(np.nanmin(mironov))  # the tighter of the two known conversions


def test_prv_is_tighter_than_rdp_for_the_same_run():
    rdp = epsilon_for("rdp", [(1.5, 0.04, 2250)], 1e-5)
    prv = epsilon_for("prv", [(1.5, 0.04, 2250)], 1e-5)
    assert 0.8 * rdp < prv < rdp


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_for_a_target_spends_at_most_the_target_over_the_planned_steps(accountant):
    noise = noise_for_target(accountant, 4.0, 1e-5, sample_rate=0.05, steps=200)
    spent = epsilon_for(accountant, [(noise, 0.05, 200)], 1e-5)
    assert 4.0 - 0.05 < spent <= 4.0
    assert epsilon_for(accountant, [(noise * 0.9, 0.05, 200)], 1e-5) > 4.0  # not more noise than needed


def test_budget_steps_is_the_last_step_within_the_target():
    n = budget_steps("rdp", 2.0, 1e-5, noise=2.0, sample_rate=0.1, planned=1000)
    assert 0 < n < 1000
    assert epsilon_for("rdp", [(2.0, 0.1, n)], 1e-5) <= 2.0 < epsilon_for("rdp", [(2.0, 0.1, n + 1)], 1e-5)
    assert budget_steps("rdp", 50.0, 1e-5, noise=1.0, sample_rate=0.1, planned=100) == 100


def test_accountant_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import torch

    accountant = Accountant("rdp", delta=1e-5)
    accountant.opacus.step(noise_multiplier=1.1, sample_rate=0.02)
    accountant.opacus.step(noise_multiplier=1.1, sample_rate=0.02)
    torch.save({"extra": {"privacy_accountant": accountant.state_dict()}}, tmp_path / "state.pt")

    restored = Accountant("rdp", delta=1e-5)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["extra"]["privacy_accountant"])

    assert restored.steps == 2 and restored.epsilon() == accountant.epsilon()
    with pytest.raises(ValueError):  # an RDP history is not loaded into a PRV accountant
        Accountant("prv", delta=1e-5).load_state_dict(accountant.state_dict())
