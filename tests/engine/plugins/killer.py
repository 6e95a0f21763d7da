"""Test-only run hooks that SIGKILL their own process at a chosen point (kill/resume tests).

Inert unless one of these variables is set in the environment of ``privet run``:

* ``PRIVET_TEST_KILL_AFTER_STEPS=N``: die inside the N-th optimizer step of this process
  (after the weights were updated, before the step is counted or checkpointed).
* ``PRIVET_TEST_KILL_IN_CHECKPOINT=K``: die during the K-th checkpoint write of this
  process, after ``model.safetensors`` is in the temp folder and before the rename.

SIGKILL cannot be caught: nothing of the engine's cleanup runs, as after an OOM kill.
"""

from __future__ import annotations

import os
import signal

import privet

KILL_AFTER_STEPS = "PRIVET_TEST_KILL_AFTER_STEPS"
KILL_IN_CHECKPOINT = "PRIVET_TEST_KILL_IN_CHECKPOINT"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@privet.hookimpl
def wrap_training(run, objects):
    steps = int(os.environ.get(KILL_AFTER_STEPS, "0"))
    if steps > 0:
        done = [0]

        def after_step(optimizer, args, kwargs):
            done[0] += 1
            if done[0] == steps:
                _die()

        objects.optimizer.register_step_post_hook(after_step)
    writes = int(os.environ.get(KILL_IN_CHECKPOINT, "0"))
    if writes > 0:
        import safetensors.torch

        real_save_model = safetensors.torch.save_model
        seen = [0]

        def save_model(model, filename, *args, **kwargs):
            real_save_model(model, filename, *args, **kwargs)
            if os.sep + ".tmp-step-" in str(filename):
                seen[0] += 1
                if seen[0] == writes:
                    _die()

        safetensors.torch.save_model = save_model
