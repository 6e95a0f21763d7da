"""Checkpoints: pruning, a full disk mid-write, and state files that try to run code."""

from __future__ import annotations

import errno
import os
import shlex
from pathlib import Path

import pytest

import privet
from engine_support import (assert_same_tensors, blobs_pipeline, checkpoints, read_state,
                            read_weights)


def _resume(host, run_dir: Path):
    from privet.train.engine import run_from_config

    return run_from_config(None, host=host, resume_dir=run_dir)


def test_only_the_last_n_checkpoints_are_kept_and_each_is_complete(run):
    outcome = run(blobs_pipeline(checkpoint={"every_n_steps": 3, "keep_last": 2}))
    outcome.assert_success()
    found = checkpoints(outcome.run_dir)
    assert [p.name for p in found] == [p.name for p in sorted((outcome.run_dir / "checkpoints").iterdir())]
    assert len(found) == 2
    assert int(found[-1].name.split("-")[1]) == outcome.report["steps"]
    for ckpt in found:
        assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "state.json", "state.pt"]
        assert set(read_state(ckpt)) >= {"optimizer", "rng"}


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(run, host, monkeypatch):
    import torch

    from privet.train.checkpoint import CheckpointManager

    real_save = torch.save
    calls = []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: some bytes land, then the disk is full
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    config = blobs_pipeline(checkpoint={"every_n_steps": 4, "keep_last": 3})
    outcome = run(config)
    assert isinstance(outcome.error, privet.CheckpointError)
    message = str(outcome.error)
    assert "step-00000008" in message and "No space left on device" in message
    assert "previous files are intact" in message

    run_dir = Path(calls[0]).parents[2]
    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-00000004"], "no partial folder is left"
    module = _build(host, run_dir)
    _tensors, plain = CheckpointManager.load(ckpt_dir / "step-00000004", module)
    assert plain["loop"]["global_step"] == 4
    report = (run_dir / "report.json").read_text()
    assert '"status": "failed"' in report and "No space left on device" in report

    # with space again, the run resumes from step 4 and ends where an uninterrupted run ends
    monkeypatch.setattr(torch, "save", real_save)
    resumed_dir, resumed = _resume(host, run_dir)
    reference = run(config)
    reference.assert_success()
    assert resumed["status"] == "completed" and resumed["steps"] == reference.report["steps"]
    assert_same_tensors(read_weights(checkpoints(resumed_dir)[-1] / "model.safetensors"),
                        read_weights(checkpoints(reference.run_dir)[-1] / "model.safetensors"))


def _build(host, run_dir: Path):
    from privet.train.loading import load_trained

    _model, module = load_trained(run_dir, host=host, weights="last")
    return module


class _RunsAShellCommand:
    """Unpickling this runs ``touch MARKER``: what a tampered checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_resume_refuses_a_state_file_that_would_run_code(run, host, tmp_path):
    import torch

    outcome = run(blobs_pipeline(checkpoint={"every_n_steps": 4}))
    outcome.assert_success()
    latest = checkpoints(outcome.run_dir)[-1]

    # the payload is live: a plain unpickler runs it
    probe = tmp_path / "probe"
    torch.save({"optimizer": _RunsAShellCommand(probe)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert probe.exists()

    marker = tmp_path / "marker"
    torch.save({"optimizer": _RunsAShellCommand(marker), "rng": {}}, latest / "state.pt")
    with pytest.raises(privet.CheckpointError, match=r"state\.pt: refused to load"):
        _resume(host, outcome.run_dir)
    assert not marker.exists()


def test_resume_reports_damaged_weights_as_a_checkpoint_error(run, host):
    outcome = run(blobs_pipeline(checkpoint={"every_n_steps": 4}))
    outcome.assert_success()
    latest = checkpoints(outcome.run_dir)[-1]
    (latest / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(privet.CheckpointError, match=r"model\.safetensors: cannot load weights"):
        _resume(host, outcome.run_dir)



def test_load_trained_returns_the_fitted_model_and_the_best_or_last_weights(run, host):
    import torch

    from privet.train.loading import load_trained

    outcome = run(blobs_pipeline(epochs=2))
    outcome.assert_success()
    model, module = load_trained(outcome.run_dir, host=host)
    assert model.state_dict() == {"features": 6, "classes": 3}
    assert not module.training
    best = read_weights(outcome.run_dir / "best" / "model.safetensors")
    assert all(torch.equal(v, best[k]) for k, v in module.state_dict().items())
    _model, last_module = load_trained(outcome.run_dir, host=host, weights="last")
    last = read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")
    assert all(torch.equal(v, last[k]) for k, v in last_module.state_dict().items())


def test_a_model_that_trains_a_part_checkpoints_only_that_part_and_resumes_exactly(host, run, tmp_path):
    """``Model.trainable_state_dict``: what an adapter model (LoRA on a frozen LLM) relies on."""
    from safetensors.torch import load_file

    from engine_support import tinyplugin

    class HeadOnly(tinyplugin.MLP):
        """The MLP with its first layer frozen: checkpoints hold the other layers only."""

        def build(self):
            module = super().build()
            module[0].requires_grad_(False)
            return module

        def trainable_state_dict(self, module):
            return {k: v for k, v in module.state_dict().items() if not k.startswith("0.")}

        def load_trainable_state_dict(self, module, tensors):
            missing, unexpected = module.load_state_dict(tensors, strict=False)
            assert not unexpected and all(k.startswith("0.") for k in missing)

    host.register_plugin(type("HeadOnlyPlugin", (), {
        "register_models": privet.hookimpl(lambda self, register: register("tiny.head_only", HeadOnly))})(),
        "head_only")
    config = blobs_pipeline(checkpoint={"every_n_steps": 5}, epochs=3, deterministic=True)
    config["model"] = {"name": "tiny.head_only", "options": {"hidden": 8}}
    reference = run(config)
    reference.assert_success()
    saved = load_file(str(checkpoints(reference.run_dir)[-1] / "model.safetensors"))
    assert sorted(saved) == ["3.bias", "3.weight", "5.bias", "5.weight"]
    assert sorted(load_file(str(reference.run_dir / "best" / "model.safetensors"))) == sorted(saved)

    config["train"]["max_steps"] = 12  # stop part-way, then resume to the end
    stopped = run({**config, "name": "part"})
    stopped.assert_success()
    import yaml

    run_dir = stopped.run_dir
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    stored["train"]["max_steps"] = 0
    (run_dir / "config.yaml").write_text(yaml.safe_dump(stored))
    _resume(host, run_dir)
    assert_same_tensors(load_file(str(checkpoints(run_dir)[-1] / "model.safetensors")), saved)
