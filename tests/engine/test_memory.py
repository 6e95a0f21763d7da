"""Memory per epoch (TensorBoard and report.json) and the out-of-memory error a user can act on."""

from __future__ import annotations

import json
import types

import pytest

import privet
from engine_support import blobs_pipeline, tinyplugin


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_host_memory_per_epoch_reaches_tensorboard_and_report(run):
    outcome = run(blobs_pipeline(epochs=2))
    outcome.assert_success()
    memory = outcome.report["memory"]
    assert memory["device"] == "cpu" and memory["unit"] == "MiB"
    assert [e["epoch"] for e in memory["per_epoch"]] == [1, 2]
    for epoch in memory["per_epoch"]:
        assert 10 < epoch["host_rss_mib"] <= epoch["host_peak_rss_mib"] < 1 << 20
        assert "cuda_peak_allocated_mib" not in epoch  # CPU run: no CUDA numbers
    assert memory["peak"]["host_peak_rss_mib"] == max(e["host_peak_rss_mib"] for e in memory["per_epoch"])
    assert json.loads((outcome.run_dir / "report.json").read_text())["memory"] == memory
    events = _events(outcome.run_dir / "tensorboard")
    rss = events.Scalars("memory/host_rss_mib")
    assert [e.value for e in rss] == pytest.approx([e["host_rss_mib"] for e in memory["per_epoch"]])
    assert [e.step for e in rss] == [e.step for e in events.Scalars("val/loss")]
    assert "memory/host_peak_rss_mib" in events.Tags()["scalars"]


def _plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(hooks)
    return module


def _oom_plugin(after_steps: int, model_options: type | None = None) -> types.ModuleType:
    """A plugin whose model raises CUDA's out-of-memory error from its ``after_steps``-th step."""
    import torch

    class OomMLP(tinyplugin.MLP):
        calls = 0
        if model_options is not None:
            Options = model_options

        def step(self, module, batch):
            OomMLP.calls += 1
            if OomMLP.calls > after_steps:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return super().step(module, batch)

    @privet.hookimpl
    def register_models(register):
        register("oom.mlp", OomMLP)

    return _plugin("oomtest", register_models=register_models)


def test_cuda_out_of_memory_becomes_one_line_naming_the_options_that_help(host, run):
    host.register_plugin(_oom_plugin(after_steps=3), "oomtest")
    config = blobs_pipeline(epochs=2, batch_size=8, accumulate=2)
    config["model"]["name"] = "oom.mlp"
    outcome = run(config)
    err = outcome.error
    assert isinstance(err, privet.PrivetError) and err.exit_code == 2
    assert type(err).__name__ == "OutOfMemoryError"
    assert isinstance(err.__cause__, torch_oom())
    message = str(err)
    assert "\n" not in message
    assert "out of memory on cpu at step 2 (epoch 1)" in message
    for option in ("train.batch_size (now 8)", "train.accumulate (now 2)",
                   "train.precision to bf16 or fp16", "gradient checkpointing"):
        assert option in message, option


def test_out_of_memory_names_the_models_own_gradient_checkpointing_option(host, run):
    import attrs

    @attrs.define(frozen=True)
    class Options(tinyplugin.MLP.Options):
        gradient_checkpointing: bool = False

    host.register_plugin(_oom_plugin(after_steps=0, model_options=Options), "oomtest")
    config = blobs_pipeline(precision="bf16")
    config["model"]["name"] = "oom.mlp"
    message = str(run(config).error)
    assert "set model.options.gradient_checkpointing: true" in message
    assert "train.precision" not in message  # already reduced: not offered again


def test_other_errors_of_a_step_pass_through_unchanged(host, run):
    class Broken(tinyplugin.MLP):
        def step(self, module, batch):
            raise ValueError("a bug in the model")

    @privet.hookimpl
    def register_models(register):
        register("broken.mlp", Broken)

    host.register_plugin(_plugin("brokentest", register_models=register_models), "brokentest")
    config = blobs_pipeline()
    config["model"]["name"] = "broken.mlp"
    err = run(config).error
    assert type(err) is ValueError and str(err) == "a bug in the model"


def torch_oom() -> type:
    import torch

    return torch.cuda.OutOfMemoryError


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")
def test_cuda_peaks_are_reset_per_epoch(run):
    outcome = run(blobs_pipeline(epochs=2, device="cuda"))
    outcome.assert_success()
    per_epoch = outcome.report["memory"]["per_epoch"]
    for epoch in per_epoch:
        assert 0 < epoch["cuda_peak_allocated_mib"] <= epoch["cuda_peak_reserved_mib"]
    assert outcome.report["memory"]["peak"]["cuda_peak_reserved_mib"] > 0
