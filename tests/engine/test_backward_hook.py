"""``TrainingObjects.backward``: a plugin's backward replaces the loop's, once per
micro-batch, with that micro-batch's ``StepOutput`` (privet-dp's ghost clipping runs
Opacus' two passes there). Setting it takes the loop off its one-batch fast path."""

from __future__ import annotations

from typing import Any

import pytest

import privet
from engine_support import blobs_pipeline, checkpoints, read_weights


class OwnBackward:
    """Records every StepOutput it is given and backpropagates its summed loss, as the
    loop itself would: the gradients (and so the weights) must come out the same."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @privet.hookimpl
    def wrap_training(self, run, objects):
        def backward(out: privet.StepOutput) -> None:
            assert isinstance(out, privet.StepOutput) and out.loss_sum.requires_grad
            self.seen.append(out)
            out.loss_sum.backward()

        objects.backward = backward


@pytest.mark.parametrize("accumulate", [1, 3])
def test_backward_hook_runs_once_per_micro_batch_in_place_of_the_loops(host, run_pipeline, tmp_path,
                                                                       accumulate):
    import torch

    plain = run_pipeline(blobs_pipeline(batch_size=8, accumulate=accumulate))
    plain.assert_success()
    plugin = OwnBackward()
    host.register_plugin(plugin, "own-backward")
    config = blobs_pipeline(batch_size=8, accumulate=accumulate)
    config["runs_dir"] = str(tmp_path / "hooked")
    hooked = run_pipeline(config)
    hooked.assert_success()

    train = hooked.report["data"]["examples"]["train"]
    assert len(plugin.seen) == 2 * -(-train // 8)  # every micro-batch of 2 epochs, once
    assert sum(int(out.count) for out in plugin.seen) == 2 * train
    assert all(out.predictions is not None for out in plugin.seen)  # the model's own output
    a = read_weights(checkpoints(plain.run_dir)[-1] / "model.safetensors")
    b = read_weights(checkpoints(hooked.run_dir)[-1] / "model.safetensors")
    for key in a:  # the loop still normalised the hook's summed gradients by the window
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


class NoBackward:
    """A backward that computes nothing: the weights must then never move."""

    @privet.hookimpl
    def wrap_training(self, run, objects):
        import torch

        objects.backward = lambda out: None
        objects.optimizer = torch.optim.SGD(objects.module.parameters(), lr=0.5)


def test_the_loop_does_not_backpropagate_itself_when_a_hook_is_set(host, run_pipeline):
    import torch

    host.register_plugin(NoBackward(), "no-backward")
    out = run_pipeline(blobs_pipeline(batch_size=8, epochs=1, max_steps=3,
                                      checkpoint={"every_n_steps": 1, "keep_last": 5}))
    out.assert_success()

    saved = [read_weights(p / "model.safetensors") for p in checkpoints(out.run_dir)]
    assert len(saved) >= 2
    for key in saved[0]:
        assert all(torch.equal(saved[0][key], later[key]) for later in saved[1:])
