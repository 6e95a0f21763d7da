"""The loop's extension points on ``TrainingObjects`` and ``run.report_extra``, used by a
tiny plugin that has nothing to do with privacy (privet-dp is one user among others).

``extra_state`` goes into checkpoints and comes back on resume; ``metrics`` reach the
TensorBoard event file; ``stop_checks`` end a run cleanly with its reason in the report;
``micro_step`` runs between accumulated micro-batches; ``sum_loss`` hands the optimizer
unnormalised gradients; ``report_extra`` adds sections to report.json and manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import privet
from engine_support import assert_same_tensors, blobs_pipeline, checkpoints, read_state, read_weights


class Counter:
    """Steps seen, as extension-point state: saved in checkpoints, restored on resume."""

    def __init__(self) -> None:
        self.steps = 0
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = dict(state)
        self.steps = state["steps"]


class StepPlugin:
    """Counts steps, logs them, stops (or crashes) at a chosen step, reports the count."""

    def __init__(self, *, stop_at: int = 0, crash_at: int = 0) -> None:
        self.stop_at, self.crash_at = stop_at, crash_at
        self.counter = Counter()
        self.micro_steps = 0

    @privet.hookimpl
    def wrap_training(self, run, objects):
        counter = self.counter = Counter()
        objects.extra_state["counter"] = counter

        def check() -> str | None:
            counter.steps += 1
            if counter.steps == self.crash_at:
                raise RuntimeError("simulated crash")
            return f"stopped by the test at step {counter.steps}" if counter.steps == self.stop_at else None

        def micro() -> None:
            self.micro_steps += 1

        objects.stop_checks.append(check)
        objects.metrics.append(lambda: {"ext/steps": float(counter.steps)})
        objects.micro_step = micro
        run.report_extra["ext"] = lambda: {"steps": counter.steps}


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_stop_check_ends_the_run_cleanly_and_report_extra_is_written(host, run):
    plugin = StepPlugin(stop_at=7)
    host.register_plugin(plugin, "steps")
    out = run(blobs_pipeline(log_every_n_steps=3))

    out.assert_success()
    assert out.report["status"] == "stopped_early" and out.report["steps"] == 7
    assert out.report["stop_reason"] == "stopped by the test at step 7"
    assert out.report["ext"] == {"steps": 7}
    manifest = json.loads((out.run_dir / "manifest.json").read_text())
    assert manifest["ext"] == {"steps": 7} and manifest["stop_reason"] == out.report["stop_reason"]
    last = checkpoints(out.run_dir)[-1]  # the stop wrote a checkpoint at its step
    assert last.name == "step-00000007"
    assert json.loads((last / "state.json").read_text())["loop"]["stop_reason"].endswith("step 7")
    assert read_state(last)["extra"] == {"counter": {"steps": 7}}


def test_metrics_reach_tensorboard_every_log_interval_and_at_epoch_end(host, run):
    host.register_plugin(StepPlugin(), "steps")
    out = run(blobs_pipeline(log_every_n_steps=4))

    out.assert_success()
    logged = _scalars(out.run_dir, "ext/steps")
    steps = out.report["steps"]
    per_epoch = steps // 2
    expected = sorted({s for s in range(4, steps + 1, 4)} | {per_epoch, steps})
    assert sorted({s for s, _ in logged}) == expected
    assert all(value == step for step, value in logged)  # the value the callable had then


def test_extra_state_is_restored_on_resume(host, run_pipeline, tmp_path):
    from privet.train.engine import run_from_config

    crashing = StepPlugin(crash_at=6)
    host.register_plugin(crashing, "steps")
    failed = run_pipeline(blobs_pipeline(checkpoint={"every_n_steps": 4, "keep_last": 2}))
    assert isinstance(failed.error, RuntimeError)
    run_dir = tmp_path / "runs" / "blobs"
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000004"]

    crashing.crash_at = 0  # the same plugin object: the resumed run does not crash
    run_dir, report = run_from_config({}, host=host, resume_dir=run_dir)

    assert crashing.counter.loaded == {"steps": 4}
    assert report["ext"] == {"steps": report["steps"]}  # 4 restored + the steps after


def test_micro_step_runs_between_accumulated_micro_batches(host, run):
    plugin = StepPlugin()
    host.register_plugin(plugin, "steps")
    out = run(blobs_pipeline(batch_size=8, accumulate=3))

    out.assert_success()
    batches_per_epoch = -(-out.report["data"]["examples"]["train"] // 8)
    windows = [min(3, batches_per_epoch - i) for i in range(0, batches_per_epoch, 3)]
    assert plugin.micro_steps == 2 * sum(w - 1 for w in windows)  # 2 epochs


class SumLoss:
    """``sum_loss``: the optimizer gets the summed gradient and divides it itself."""

    @privet.hookimpl
    def wrap_training(self, run, objects):
        import torch

        objects.sum_loss = True
        lr = objects.optimizer.param_groups[0]["lr"]
        per_step = run.config.train.batch_size * run.config.train.accumulate
        objects.optimizer = torch.optim.SGD(objects.module.parameters(), lr=lr / per_step)


class PlainSGD:
    @privet.hookimpl
    def wrap_training(self, run, objects):
        import torch

        lr = objects.optimizer.param_groups[0]["lr"]
        objects.optimizer = torch.optim.SGD(objects.module.parameters(), lr=lr)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_sum_loss_hands_the_optimizer_the_unnormalised_gradient(privet_host, run_pipeline, tmp_path, accumulate):
    import torch

    from engine_support import kit, tinyplugin

    results = []
    for name, plugin in (("mean", PlainSGD()), ("sum", SumLoss())):
        from privet.testing import make_test_host

        host = make_test_host()
        host.register_plugin(tinyplugin, "tinyplugin")
        host.register_plugin(kit, "kit")
        host.register_plugin(plugin, name)
        from privet.train.engine import run_from_config

        # 192 training examples in batches of 16: every batch is full, so the mean
        # gradient is the summed one / 16 (with accumulation: / 32 over the window)
        config = blobs_pipeline(batch_size=16 // accumulate, accumulate=accumulate,
                                optimizer={"name": "sgd", "lr": 0.1})
        config["data"]["split"] = {"method": "ordered", "val": 0.2}
        config["runs_dir"] = str(tmp_path / name)
        run_dir, report = run_from_config(config, host=host, base_dir=tmp_path)
        assert report["data"]["examples"]["train"] % 16 == 0
        results.append(read_weights(checkpoints(run_dir)[-1] / "model.safetensors"))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):  # and the comparison can tell runs apart
        assert_same_tensors(results[0], {k: v + 1 for k, v in results[1].items()})


def test_an_unknown_privacy_mechanism_is_one_line_naming_the_key_and_the_plugin(host, tmp_path):
    from privet.config import load_config

    config = blobs_pipeline()
    config["privacy"] = {"mechanism": "dp-sgd", "target_epsilon": 8}
    with pytest.raises(privet.ConfigError) as err:
        load_config(data=config, catalog=host.catalog, base_dir=tmp_path)

    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert message.startswith("privacy.mechanism: unknown privacy mechanism 'dp-sgd'")
    assert "pip install privet-dp" in message
