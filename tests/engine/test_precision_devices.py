"""Mixed precision end to end: bf16 autocast and fp16 with GradScaler, on CPU and on CUDA.

The CUDA cases are the issue's "verified on a GPU" checks: they skip without a device and
run as they are on a GPU machine (``pytest tests/engine/test_precision_devices.py``).
"""

from __future__ import annotations

import pytest
import torch

import privet
from engine_support import blobs_pipeline

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


class DtypeSpy:
    """Records the dtype of the first Linear layer's output in every training forward."""

    def __init__(self) -> None:
        self.seen: list[torch.dtype] = []

    @privet.hookimpl
    def wrap_training(self, run, objects):
        linear = next(m for m in objects.module.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda _m, _i, out: self.seen.append(out.dtype))


def _run(host, run_pipeline, device: str, precision: str, tmp_path):
    spy = DtypeSpy()
    host.register_plugin(spy, f"spy-{precision}-{device}")
    config = blobs_pipeline(device=device, precision=precision, epochs=4,
                            optimizer={"name": "adamw", "lr": 0.03})
    config["runs_dir"] = str(tmp_path / "runs")
    outcome = run_pipeline(config)
    outcome.assert_success()
    return outcome, spy


def _last_state(run_dir):
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return torch.load(last / "state.pt", weights_only=True), last


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_weights(host, run_pipeline, device, tmp_path):
    outcome, spy = _run(host, run_pipeline, device, "bf16", tmp_path)
    assert torch.bfloat16 in spy.seen
    assert outcome.report["final"]["val/accuracy"] > 0.8
    from safetensors.torch import load_file

    _, last = _last_state(outcome.run_dir)
    weights = load_file(str(last / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(host, run_pipeline, device, tmp_path):
    outcome, spy = _run(host, run_pipeline, device, "fp16", tmp_path)
    assert torch.float16 in spy.seen
    assert outcome.report["final"]["val/accuracy"] > 0.8
    state, _ = _last_state(outcome.run_dir)
    assert state["scaler"]["scale"] > 0
