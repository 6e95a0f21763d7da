"""The training loop: early stopping, scheduler intervals, and the order of the run hooks."""

from __future__ import annotations

import math

import pytest

import privet
from engine_support import blobs_pipeline, checkpoints, probe_pipeline, read_state, read_weights


class Recorder:
    """Run hooks that log what they see; keeps the training objects for inspection."""

    def __init__(self, replace_optimizer: bool = False) -> None:
        self.events: list[tuple] = []
        self.lrs: list[float] = []
        self.objects = None
        self.replace_optimizer = replace_optimizer

    @privet.hookimpl
    def wrap_training(self, run, objects):
        import torch

        self.events.append(("wrap_training",))
        if self.replace_optimizer:
            objects.optimizer = torch.optim.SGD(objects.module.parameters(), lr=0.0)
        self.objects = objects

    @privet.hookimpl
    def before_run(self, run):
        self.events.append(("before_run",))

    @privet.hookimpl
    def after_epoch(self, run, epoch, metrics):
        self.events.append(("after_epoch", epoch))
        self.lrs.append(self.objects.optimizer.param_groups[0]["lr"])

    @privet.hookimpl
    def after_checkpoint(self, run, path, step):
        assert (path / "state.json").exists() and path.name == f"step-{step:08d}"
        self.events.append(("after_checkpoint", step))

    @privet.hookimpl
    def after_run(self, run, report):
        self.events.append(("after_run", report["status"]))

    @privet.hookimpl
    def on_run_error(self, run, error):
        self.events.append(("on_run_error", type(error).__name__))


@pytest.fixture
def recorder(host):
    rec = Recorder()
    host.register_plugin(rec, "recorder")
    return rec


# -- early stopping -------------------------------------------------------------------------


def _expected_stop(values: list[float], mode: str, patience: int, delta: float) -> int | None:
    """The 1-based epoch after which early stopping fires for this history (None: never)."""
    best, bad = None, 0
    for epoch, v in enumerate(values, start=1):
        if best is None or (v < best - delta if mode == "min" else v > best + delta):
            best, bad = v, 0
        else:
            bad += 1
            if bad >= patience:
                return epoch
    return None


@pytest.mark.parametrize("monitor, mode, lr, patience, delta, stops_after", [
    ("val/loss", "min", 0.0, 2, 0.0, 3),       # nothing changes: best at 1, two bad epochs
    ("val/loss", "max", 0.01, 1, 0.0, 2),      # the loss falls, which "max" counts as worse
    ("val/loss", "min", 0.01, 1, 10.0, 2),     # no improvement is bigger than min_delta
    ("val/accuracy", "min", 0.0, 3, 0.0, 4),   # a constant accuracy never improves
    ("val/loss", "min", 0.01, 1, 0.0, None),   # improves every epoch: runs to the end
])
def test_early_stopping_fires_after_patience_epochs_without_improvement(run, monitor, mode, lr, patience,
                                                                       delta, stops_after):
    config = blobs_pipeline(epochs=5, optimizer={"lr": lr},
                            early_stopping={"monitor": monitor, "mode": mode, "patience": patience,
                                            "min_delta": delta})
    outcome = run(config)
    outcome.assert_success()
    report = outcome.report
    values = [h[monitor] for h in report["history"]]
    assert _expected_stop(values, mode, patience, delta) == stops_after, values
    assert report["epochs"] == len(values) == (stops_after or 5)
    assert report["status"] == ("stopped_early" if stops_after else "completed")
    assert report["monitor"] == monitor
    assert report["best"] == report["history"][0 if stops_after else -1]


def test_early_stopping_on_a_metric_that_does_not_exist_is_refused_before_training(run):
    outcome = run(blobs_pipeline(early_stopping={"monitor": "val/acc"}))
    assert isinstance(outcome.error, privet.ConfigError)
    assert outcome.run_dir is None  # refused at validation: no run, no epoch
    message = str(outcome.error)
    assert message.startswith("train.early_stopping.monitor: ") and "\n" not in message
    assert "'val/acc'" in message and "val/accuracy" in message


# -- schedulers ------------------------------------------------------------------------------


def _logged_lr(run_dir) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/lr")}


def test_a_per_batch_scheduler_steps_after_every_optimizer_step(run):
    outcome = run(blobs_pipeline(epochs=1, log_every_n_steps=1, optimizer={"lr": 0.1},
                                 scheduler={"name": "linear_warmup", "options": {"warmup_steps": 4}}))
    outcome.assert_success()
    total = outcome.report["steps"]
    lrs = _logged_lr(outcome.run_dir)
    assert sorted(lrs) == list(range(1, total + 1))
    for step, lr in lrs.items():  # logged after `step` scheduler steps
        factor = (step + 1) / 4 if step < 4 else max(0.0, 1 - (step - 4) / (total - 4))
        assert lr == pytest.approx(0.1 * factor, rel=1e-6, abs=1e-9), step


def test_a_per_epoch_scheduler_steps_at_the_end_of_each_epoch(run):
    outcome = run(blobs_pipeline(epochs=3, log_every_n_steps=1, optimizer={"lr": 0.1},
                                 scheduler={"name": "step", "options": {"step_size": 1, "gamma": 0.5}}))
    outcome.assert_success()
    per_epoch = outcome.report["steps"] // 3
    for step, lr in _logged_lr(outcome.run_dir).items():
        epoch = (step - 1) // per_epoch
        assert lr == pytest.approx(0.1 * 0.5 ** epoch, rel=1e-6), step


def test_a_plateau_scheduler_steps_on_the_monitored_validation_metric(run, recorder):
    # mode max on a falling val/loss: every epoch after the first is a plateau
    outcome = run(blobs_pipeline(epochs=3, optimizer={"lr": 0.01},
                                 scheduler={"name": "plateau", "options": {"mode": "max", "patience": 0,
                                                                           "factor": 0.5}}))
    outcome.assert_success()
    losses = [h["val/loss"] for h in outcome.report["history"]]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 3
    assert recorder.lrs == pytest.approx([0.01, 0.005, 0.0025])


# -- run hooks --------------------------------------------------------------------------------


def test_run_hooks_fire_in_order_with_each_checkpoint_announced_once(run, recorder):
    outcome = run(blobs_pipeline(epochs=2, checkpoint={"every_n_steps": 7, "keep_last": 10}))
    outcome.assert_success()
    per_epoch = outcome.report["steps"] // 2
    assert per_epoch == 14, "this test places checkpoints on epoch ends (219 records, batch 16)"
    assert recorder.events == [
        ("wrap_training",), ("before_run",),
        ("after_checkpoint", 7), ("after_epoch", 0), ("after_checkpoint", 14),
        ("after_checkpoint", 21), ("after_epoch", 1), ("after_checkpoint", 28),
        ("after_run", "completed"),
    ]
    assert [p.name for p in checkpoints(outcome.run_dir)] == [f"step-{s:08d}" for s in (7, 14, 21, 28)]


def test_on_run_error_fires_on_failure_and_after_run_does_not(run, recorder):
    outcome = run(probe_pipeline(epochs=2, model={"fault": "nan_loss", "fault_at": 20}))
    assert isinstance(outcome.error, privet.TrainingError)
    assert recorder.events == [("wrap_training",), ("before_run",), ("after_epoch", 0),
                               ("after_checkpoint", 14), ("on_run_error", "TrainingError")]


def test_wrap_training_can_replace_the_optimizer(run, host):
    import torch

    from privet.train.loading import load_trained

    host.register_plugin(Recorder(replace_optimizer=True), "recorder")
    outcome = run(blobs_pipeline(epochs=1))
    outcome.assert_success()
    last = checkpoints(outcome.run_dir)[-1]
    saved = read_state(last)["optimizer"]
    assert saved["param_groups"][0]["lr"] == 0.0 and "momentum" in saved["param_groups"][0]
    assert all("exp_avg" not in s for s in saved["state"].values())
    model, _ = load_trained(outcome.run_dir, host=host)
    torch.manual_seed(7)
    initial = model.build().state_dict()
    for name, value in read_weights(last / "model.safetensors").items():
        assert torch.equal(value, initial[name]), "an lr-0 SGD leaves the weights where they started"
    assert math.isfinite(outcome.report["final"]["val/loss"])
