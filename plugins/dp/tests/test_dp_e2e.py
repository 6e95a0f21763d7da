"""DP-SGD end to end through ``privet run``'s engine, on each supported model family."""

from __future__ import annotations

import json

import pytest

PRIVACY = {"mechanism": "dp-sgd", "target_epsilon": 8, "delta": 1e-5, "max_grad_norm": 1.0,
           "randomness": "seeded"}


def test_mlp_trains_privately_and_reports_privacy(host, run_pipeline, write_table, mlp_pipeline):
    write_table(400)
    out = run_pipeline(mlp_pipeline(PRIVACY), plugins=["timeseries"])

    out.assert_success()
    privacy = out.report["privacy"]
    assert privacy["mechanism"] == "dp-sgd"
    assert 0 < privacy["epsilon"] <= 8
    assert privacy["delta"] == 1e-5 and privacy["accountant"] == "rdp"
    n = privacy["training_examples"]
    assert privacy["sample_rate"] == pytest.approx(32 / n)  # the configured batch, expected
    assert privacy["steps"] == privacy["planned_steps"] == 2 * -(-n // 32) == out.report["steps"]
    manifest = json.loads((out.run_dir / "manifest.json").read_text())
    assert manifest["privacy"] == privacy
    assert out.report["final"]["val/accuracy"] > 0.85  # private, and it still learns
