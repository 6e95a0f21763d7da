"""Run folders under attack: concurrent runs, names that climb out of runs_dir, a resume
of a run that is still running, kills and faults that must leave earlier work intact."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from engine_support import KIT_DIR, TESTS, blobs_pipeline, checkpoints, launcher, probe_pipeline

from privet.runs import RunLock, create_run_folder


def _write_pipeline(tmp_path: Path, **changes) -> Path:
    config = blobs_pipeline(checkpoint={"every_n_steps": 5})
    config["plugins"] = {"paths": [str(TESTS), str(KIT_DIR)]}
    config.update(changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("privet: warning")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.slow
def test_two_runs_started_at_once_get_two_folders_each_with_its_own_config(tmp_path):
    pipeline = _write_pipeline(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    env["PRIVET_LOAD_PLUGINS"] = ""
    procs = [subprocess.Popen([*launcher(), "run", str(pipeline), "-s", f"seed={seed}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (101, 202)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert folders == ["blobs", "blobs-2"]
    seeds = set()
    for name in folders:
        run_dir = tmp_path / "runs" / name
        seeds.add(yaml.safe_load((run_dir / "config.yaml").read_text())["seed"])
        assert json.loads((run_dir / "report.json").read_text())["status"] == "completed"
        assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert seeds == {101, 202}, "each folder holds the config of the run that trained in it"


def test_concurrent_claims_of_one_name_never_share_a_folder(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: create_run_folder(tmp_path / "runs", "same"), range(16)))
    assert len(set(claimed)) == 16
    assert {p.name for p in claimed} == {"same", *(f"same-{k}" for k in range(2, 17))}


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", "x" * 300, ""])
def test_a_run_name_that_is_not_a_plain_name_is_refused(privet_cli, tmp_path, name):
    pipeline = _write_pipeline(tmp_path, name=name)
    line = _one_line_error(privet_cli("run", str(pipeline)))
    assert "name" in line
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_name_given_on_the_command_line_is_checked_too(privet_cli, tmp_path):
    pipeline = _write_pipeline(tmp_path)
    line = _one_line_error(privet_cli("run", str(pipeline), "--name", "../outside"))
    assert "--name" in line and "plain" in line
    assert not (tmp_path / "outside").exists()


def test_resume_of_a_run_that_is_still_running_is_refused_and_changes_nothing(privet_cli, tmp_path):
    assert privet_cli("run", str(_write_pipeline(tmp_path))).returncode == 0
    run_dir = tmp_path / "runs" / "blobs"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    lock = RunLock(run_dir).acquire()  # what a running `privet run` holds for its life
    try:
        line = _one_line_error(privet_cli("resume", str(run_dir)))
    finally:
        lock.release()
    assert str(run_dir) in line and "in use" in line
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


@pytest.mark.slow
def test_kill_during_preparation_then_resume_finishes_the_run(privet_cli, tmp_path):
    config = blobs_pipeline()
    config["plugins"] = {"paths": [str(TESTS), str(KIT_DIR)]}
    config["data"]["cleaners"] = ["tiny.scale", "killer.passthrough"]
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    killed = privet_cli("run", "pipeline.yaml", env={"PRIVET_TEST_KILL_IN_PREPARE": "100"})
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / "runs" / "blobs"
    assert (run_dir / "config.yaml").exists() and not (run_dir / "report.json").exists()

    resumed = privet_cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["data"]["counts"]["train"] > 0
    fresh = privet_cli("run", "pipeline.yaml", "--name", "fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads((tmp_path / "runs" / "fresh" / "report.json").read_text())["final"] == report["final"]


def test_a_run_folder_that_cannot_be_created_gives_one_line_naming_the_path(privet_cli, tmp_path):
    pipeline = _write_pipeline(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder should be\n")
    line = _one_line_error(privet_cli("run", str(pipeline)))
    assert str(tmp_path / "runs") in line
    assert (tmp_path / "runs").read_text() == "a file where the runs folder should be\n"


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(run, monkeypatch, tmp_path):
    import torch

    real_save = torch.save
    calls = []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(str(f))
        if len(calls) == 2:  # torch reports ENOSPC from its C++ writer as a RuntimeError
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: "
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    outcome = run(blobs_pipeline(checkpoint={"every_n_steps": 5, "keep_last": 3}))
    import privet

    assert isinstance(outcome.error, privet.CheckpointError)
    message = str(outcome.error)
    assert "step-00000010" in message and "previous files are intact" in message
    assert "\n" not in message
    run_dir = Path(calls[0]).parents[2]
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000005"]
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("damage", [
    lambda plain: [1, 2, 3],
    lambda plain: {**plain, "loop": {"epoch": "x", "bogus": 1}},
    lambda plain: {"loop": plain["loop"]},
])
def test_a_state_json_of_the_wrong_shape_is_refused_naming_the_file(run, host, tmp_path, damage):
    from privet.train.engine import run_from_config

    outcome = run(blobs_pipeline(checkpoint={"every_n_steps": 5}))
    outcome.assert_success()
    last = checkpoints(outcome.run_dir)[-1]
    state = last / "state.json"
    state.write_text(json.dumps(damage(json.loads(state.read_text()))))
    weights = (last / "model.safetensors").read_bytes()
    import privet

    with pytest.raises(privet.CheckpointError) as info:
        run_from_config({}, host=host, resume_dir=outcome.run_dir)
    assert "state.json" in str(info.value) or str(last) in str(info.value)
    assert (last / "model.safetensors").read_bytes() == weights


def test_a_raising_on_run_error_hook_does_not_hide_the_error_and_the_report_is_written(host, run, tmp_path):
    import privet

    class Noisy:
        @privet.hookimpl
        def on_run_error(self, run, error):
            raise ValueError("the hook itself is broken")

    host.register_plugin(Noisy(), "noisy")
    outcome = run(probe_pipeline(model={"fault": "nan_loss", "fault_at": 2}))
    assert isinstance(outcome.error, privet.TrainingError) and "loss is nan" in str(outcome.error)
    report = json.loads((tmp_path / "runs" / "blobs" / "report.json").read_text())
    assert report["status"] == "failed" and "loss is nan" in report["error"]
    assert report["data"]["counts"]["train"] > 0


def test_a_run_that_failed_before_its_first_checkpoint_gives_its_name_to_the_next(run, tmp_path):
    import privet

    failed = run(probe_pipeline(model={"fault": "nan_loss", "fault_at": 2}))
    assert isinstance(failed.error, privet.TrainingError)
    first = tmp_path / "runs" / "blobs"
    report_of_failure = (first / "report.json").read_text()

    outcome = run(probe_pipeline())
    outcome.assert_success()
    assert outcome.run_dir == first.resolve()
    kept = tmp_path / "runs" / "blobs.failed-1"
    assert (kept / "report.json").read_text() == report_of_failure  # the evidence is kept


def test_a_failed_run_with_a_checkpoint_keeps_its_name_for_resume(run, tmp_path):
    import privet

    failed = run(probe_pipeline(checkpoint={"every_n_steps": 2}, model={"fault": "nan_loss", "fault_at": 5}))
    assert isinstance(failed.error, privet.TrainingError)
    outcome = run(probe_pipeline())
    outcome.assert_success()
    assert outcome.run_dir.name == "blobs-2"
    assert checkpoints(tmp_path / "runs" / "blobs"), "the resumable run is left where it was"
