"""Non-finite numbers: fp16 skips the step, fp32 stops before a checkpoint holds NaN; clipping."""

from __future__ import annotations

import math

import pytest

import privet
from engine_support import (blobs_pipeline, checkpoints, fitted_mlp, prepared_table, probe_pipeline,
                            read_weights)


def _all_finite(weights: dict) -> bool:
    import torch

    return all(bool(torch.isfinite(t).all()) for t in weights.values())


@pytest.mark.parametrize("fault", ["inf_grad", "nan_loss"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_fp16_skips_a_step_with_non_finite_gradients_and_completes(run, fault, clip):
    config = probe_pipeline(precision="fp16", clip_grad_norm=clip,
                            model={"fault": fault, "fault_at": 3})
    outcome = run(config)
    outcome.assert_success()
    assert outcome.report["skipped_steps"] == 1
    assert outcome.report["status"] == "completed"
    assert math.isfinite(outcome.report["final"]["val/loss"])
    assert _all_finite(read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors"))


def test_fp16_stops_when_every_step_is_skipped(run):
    from privet.train.loop import MAX_SKIPS_IN_A_ROW

    config = probe_pipeline(precision="fp16", model={"fault": "nan_loss_from", "fault_at": 2})
    config["train"]["epochs"] = 40
    outcome = run(config)
    assert isinstance(outcome.error, privet.TrainingError)
    assert f"{MAX_SKIPS_IN_A_ROW} optimizer steps in a row were skipped" in str(outcome.error)


def test_fp32_nan_loss_stops_the_run_and_no_checkpoint_holds_nan(run, tmp_path):
    outcome = run(probe_pipeline(checkpoint={"every_n_steps": 5}, model={"fault": "nan_loss", "fault_at": 7}))
    assert isinstance(outcome.error, privet.TrainingError)
    assert "loss is nan at step 7" in str(outcome.error)
    run_dir = tmp_path / "runs" / "blobs"
    saved = checkpoints(run_dir)
    assert [p.name for p in saved] == ["step-00000005"]
    assert _all_finite(read_weights(saved[0] / "model.safetensors"))
    assert '"status": "failed"' in (run_dir / "report.json").read_text()


def test_fp32_nan_weights_are_never_written_to_a_checkpoint(run, tmp_path):
    # a finite loss with NaN gradients at step 5 poisons the weights right before the
    # checkpoint of step 5: the engine refuses to write it
    outcome = run(probe_pipeline(checkpoint={"every_n_steps": 5}, model={"fault": "nan_grad", "fault_at": 5}))
    assert isinstance(outcome.error, privet.TrainingError)
    assert "is not finite at step 5; no checkpoint was written" in str(outcome.error)
    run_dir = tmp_path / "runs" / "blobs"
    assert checkpoints(run_dir) == [] and not list(run_dir.glob("checkpoints/.tmp-*"))
    assert not (run_dir / "best").exists()


def test_clipping_bounds_the_update_and_logs_the_unclipped_norm(run):
    import torch
    import torch.nn.functional as F
    from torch.utils.data import default_collate
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from privet.data.loader import epoch_order

    config = blobs_pipeline(max_steps=1, log_every_n_steps=1, clip_grad_norm=0.01,
                            optimizer={"name": "sgd", "lr": 1.0})
    outcome = run(config)
    outcome.assert_success()
    model = fitted_mlp(outcome.run_dir, hidden=16)
    table = prepared_table(outcome.report)
    torch.manual_seed(7)
    module = model.build()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    x, y = default_collate([model.encode(r) for r in table.rows(epoch_order(len(table), 7, 0)[:16])])
    F.cross_entropy(module(x), y).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert norm > 0.1, "the clip must bite for this test to mean anything"

    after = read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")
    moved = torch.linalg.vector_norm(torch.stack([(after[k] - before[k]).norm() for k in before]))
    assert float(moved) == pytest.approx(0.01, rel=1e-4)
    events = EventAccumulator(str(outcome.run_dir / "tensorboard"))
    events.Reload()
    logged = events.Scalars("train/grad_norm")
    assert [e.step for e in logged] == [1]
    assert logged[0].value == pytest.approx(float(norm), rel=1e-5)


def test_a_nan_loss_between_logs_stops_the_run_at_the_next_log_naming_its_step(run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # losses are checked once per log interval (one host sync), not every step
    outcome = run(probe_pipeline(log_every_n_steps=4, model={"fault": "nan_loss", "fault_at": 6}))
    assert isinstance(outcome.error, privet.TrainingError)
    assert "loss is nan at step 6 (epoch 1)" in str(outcome.error)
    run_dir = tmp_path / "runs" / "blobs"
    assert checkpoints(run_dir) == []
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    # what was logged before the failure is in the event file; the poisoned interval is not
    assert [e.step for e in events.Scalars("train/loss")] == [4]
    assert math.isfinite(events.Scalars("train/loss")[0].value)
