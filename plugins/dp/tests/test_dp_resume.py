"""SIGKILL + ``privet resume`` of a private run: the same epsilon and bit-identical weights.

The accountant's history and the run's randomness (its secret seed and noise generator)
travel in the checkpoint (``TrainingObjects.extra_state``), and the Poisson draws are a
pure function of (seed, epoch, step), so the resumed run is the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent


def privet_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    base.update(PRIVET_LOAD_PLUGINS="dp,timeseries", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "privet", *args], cwd=cwd, env=base,
                          capture_output=True, text=True, timeout=300)


def _final(run_dir: Path) -> tuple[dict, dict]:
    import torch
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    state = torch.load(last / "state.pt", weights_only=True)
    return load_file(str(last / "model.safetensors")), state


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_epsilon_and_identical_weights(tmp_path, write_table, mlp_pipeline):
    import torch

    write_table(300)
    config = mlp_pipeline({"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                           "randomness": "seeded"},  # an uninterrupted twin to compare with
                          epochs=3, checkpoint={"every_n_steps": 3, "keep_last": 2}, deterministic=True)
    config["model"]["options"]["dropout"] = 0.2  # the dropout masks must continue too
    config["plugins"] = {"paths": [str(HERE / "kill_plugin")]}
    config["runs_dir"] = "runs"
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))

    reference = privet_cli("run", "pipeline.yaml", "--name", "reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    killed = privet_cli("run", "pipeline.yaml", "--name", "killed", cwd=tmp_path,
                        env={"PRIVET_TEST_DP_KILL_AFTER": "10"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "runs" / "killed"
    assert not (run_dir / "report.json").exists()
    resumed = privet_cli("resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    ref_report = json.loads((tmp_path / "runs" / "reference" / "report.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == ref_report["steps"] > 10
    assert report["privacy"]["epsilon"] == ref_report["privacy"]["epsilon"]
    assert report["privacy"]["steps"] == report["steps"]  # no step counted twice or lost
    ref_weights, ref_state = _final(tmp_path / "runs" / "reference")
    weights, state = _final(run_dir)
    assert set(weights) == set(ref_weights)
    for key in weights:
        assert torch.equal(weights[key], ref_weights[key]), key
    assert state["extra"]["privacy_accountant"] == ref_state["extra"]["privacy_accountant"]
    for key in ("seed", "noise_rng"):
        assert torch.equal(state["extra"]["privacy_randomness"][key],
                           ref_state["extra"]["privacy_randomness"][key])


@pytest.mark.slow
def test_secret_randomness_is_restored_from_the_checkpoint_not_drawn_again(tmp_path, write_table,
                                                                           mlp_pipeline):
    """Two resumes of one killed secret-mode run agree bit for bit: the seed and noise
    generator come back from the checkpoint (fresh OS randomness would make them differ)."""
    import shutil

    import torch

    write_table(300)
    config = mlp_pipeline({"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
                          epochs=2, checkpoint={"every_n_steps": 3, "keep_last": 2}, deterministic=True)
    config["plugins"] = {"paths": [str(HERE / "kill_plugin")]}
    config["runs_dir"] = "runs"
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    killed = privet_cli("run", "pipeline.yaml", "--name", "killed", cwd=tmp_path,
                        env={"PRIVET_TEST_DP_KILL_AFTER": "8"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first, second = tmp_path / "runs" / "killed", tmp_path / "runs" / "twin"
    shutil.copytree(first, second, symlinks=True)
    (second / ".lock").unlink(missing_ok=True)
    for run_dir in (first, second):
        resumed = privet_cli("resume", str(run_dir), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    a, a_state = _final(first)
    b, b_state = _final(second)
    assert json.loads((first / "report.json").read_text())["privacy"]["randomness"] == "secret"
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(a_state["extra"]["privacy_randomness"]["seed"],
                       b_state["extra"]["privacy_randomness"]["seed"])
    # the secret is nowhere in the plain files a reader of the run folder sees
    secret = str(int(a_state["extra"]["privacy_randomness"]["seed"]))
    for name in ("config.yaml", "manifest.json", "report.json"):
        assert secret not in (first / name).read_text()
