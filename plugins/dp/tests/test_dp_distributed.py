"""``privet run --nproc-per-node 2`` with DP-SGD: Opacus' DPDDP and DistributedDPOptimizer.

Each rank Poisson-samples its own share of the examples at the run's sample rate, clips
its examples' gradients, rank 0 alone adds the noise, and the sum is all-reduced, so the
accountant sees one Gaussian mechanism per step at rate q, as in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hooks", "ghost"])  # ghost: Opacus' distributed ghost optimizer
def test_two_processes_train_privately_with_one_accountant(tmp_path, write_table, mlp_pipeline, mode):
    from privet_dp.accounting import epsilon_for

    write_table(400)
    config = mlp_pipeline({"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                           "randomness": "seeded", "grad_sample_mode": mode},
                          batch_size=16, accumulate=2)
    config["runs_dir"] = "runs"
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    env.update(PRIVET_LOAD_PLUGINS="dp,timeseries", OMP_NUM_THREADS="1")

    done = subprocess.run([sys.executable, "-m", "privet", "run", "pipeline.yaml", "--nproc-per-node", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "runs" / "dp" / "report.json").read_text())
    privacy = report["privacy"]
    n = privacy["training_examples"]
    assert privacy["sample_rate"] == pytest.approx(16 * 2 * 2 / n)  # the global expected batch
    assert privacy["expected_batch_size"] == pytest.approx(32.0)  # per rank
    assert privacy["steps"] == report["steps"] == 2 * -(-n // 64)
    assert privacy["epsilon"] == epsilon_for("rdp", [(1.0, privacy["sample_rate"], privacy["steps"])], 1e-5)
    assert report["final"]["val/accuracy"] > 0.8
    assert privacy["grad_sample_mode"] == mode
    manifest = json.loads((tmp_path / "runs" / "dp" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["privacy"] == privacy
