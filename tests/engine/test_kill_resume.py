"""``privet resume`` after SIGKILL — mid-step and mid-checkpoint — reaches the uninterrupted result.

Each kill comes from ``plugins/killer.py`` inside the ``privet run`` process, so it lands
at a chosen point (inside an optimizer step, or inside a checkpoint write between the
weights and the rename) without racing the process from outside.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import yaml

from engine_support import KIT_DIR, TESTS, assert_same_tensors, checkpoints, read_state, read_weights

EVERY = 5  # checkpoint every 5 optimizer steps


def _pipeline(tmp_path: Path) -> Path:
    config = {
        "name": "kr",
        "seed": 11,
        "runs_dir": "runs",
        "plugins": {"paths": [str(TESTS), str(KIT_DIR)]},
        "data": {"source": {"name": "tiny.blobs", "options": {"n": 400, "features": 6}},
                 "cleaners": ["tiny.scale"]},
        "model": {"name": "tiny.mlp", "options": {"hidden": 16, "dropout": 0.3}},
        "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "deterministic": True,
                  "scheduler": "cosine", "checkpoint": {"every_n_steps": EVERY, "keep_last": 2},
                  "progress": "log", "log_every_n_steps": 5},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("train/loss", "val/loss")}


def _final_state(run_dir: Path) -> tuple[dict, dict, dict]:
    last = checkpoints(run_dir)[-1]
    return (read_weights(last / "model.safetensors"), read_state(last),
            json.loads((last / "state.json").read_text()))


@pytest.mark.slow
def test_resume_after_kills_reaches_the_same_weights_and_optimizer_state(privet_cli, tmp_path):
    pipeline = _pipeline(tmp_path)
    reference = privet_cli("run", str(pipeline), "--name", "reference")
    assert reference.returncode == 0, reference.stderr
    ref_dir = tmp_path / "runs" / "reference"
    total = json.loads((ref_dir / "report.json").read_text())["steps"]
    assert total > 4 * EVERY

    rng = random.Random()
    first, later = rng.randint(2, 2 * EVERY), rng.randint(2, 2 * EVERY)
    plan = f"killed after {first} steps, in the 2nd checkpoint write of the resume, then after {later} more"
    killed_dir = tmp_path / "runs" / "killed"

    # 1. killed inside an optimizer step of the first process
    r = privet_cli("run", str(pipeline), "--name", "killed", env={"PRIVET_TEST_KILL_AFTER_STEPS": str(first)})
    assert r.returncode == -signal.SIGKILL, (plan, r.stderr)
    assert not (killed_dir / "report.json").exists()

    # 2. resumed, then killed while writing its second checkpoint: the temp folder stays behind
    r = privet_cli("resume", str(killed_dir), env={"PRIVET_TEST_KILL_IN_CHECKPOINT": "2"})
    assert r.returncode == -signal.SIGKILL, (plan, r.stderr)
    leftovers = list((killed_dir / "checkpoints").glob(".tmp-step-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").exists(), plan
    assert not (leftovers[0] / "state.json").exists()
    complete_before = checkpoints(killed_dir)

    # 3. resumed from the last complete checkpoint, killed again mid-step
    r = privet_cli("resume", str(killed_dir), env={"PRIVET_TEST_KILL_AFTER_STEPS": str(later)})
    assert r.returncode == -signal.SIGKILL, (plan, r.stderr)
    assert "resuming from " + complete_before[-1].name in r.stderr, plan
    assert not list((killed_dir / "checkpoints").glob(".tmp-step-*")), "resume cleans partial writes"

    # 4. resumed to the end
    r = privet_cli("resume", str(killed_dir))
    assert r.returncode == 0, (plan, r.stderr)
    report = json.loads((killed_dir / "report.json").read_text())
    ref_report = json.loads((ref_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["steps"] == total
    assert report["final"] == ref_report["final"], plan
    assert report["history"] == ref_report["history"], plan

    weights, state, loop = _final_state(killed_dir)
    ref_weights, ref_state, ref_loop = _final_state(ref_dir)
    assert_same_tensors(weights, ref_weights, f"weights ({plan})")
    assert_same_tensors(state["optimizer"], ref_state["optimizer"], f"optimizer ({plan})")
    assert_same_tensors(state["scheduler"], ref_state["scheduler"], f"scheduler ({plan})")
    assert_same_tensors(state["rng"], ref_state["rng"], f"rng ({plan})")
    assert loop == ref_loop, plan
    assert_same_tensors(read_weights(killed_dir / "best" / "model.safetensors"),
                        read_weights(ref_dir / "best" / "model.safetensors"), f"best ({plan})")
    # the TensorBoard curves continue: no step lost or logged twice across the kills
    curves, ref_curves = _scalars(killed_dir), _scalars(ref_dir)
    assert [s for s, _ in curves["train/loss"]] == [s for s, _ in ref_curves["train/loss"]], plan
    assert curves["val/loss"] == ref_curves["val/loss"], plan
