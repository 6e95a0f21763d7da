"""Test-only run hooks that SIGKILL their own process at a chosen point (kill/resume tests).

Inert unless one of these variables is set in the environment of ``privet run``:

* ``PRIVET_TEST_KILL_AFTER_STEPS=N``: die inside the N-th optimizer step of this process
  (after the weights were updated, before the step is counted or checkpointed).
* ``PRIVET_TEST_KILL_IN_CHECKPOINT=K``: die during the K-th checkpoint write of this
  process, after ``model.safetensors`` is in the temp folder and before the rename.
* ``PRIVET_TEST_KILL_IN_PREPARE=R``: the cleaner ``killer.passthrough`` dies at the R-th
  record it cleans, that is while the data is being prepared.

SIGKILL cannot be caught: nothing of the engine's cleanup runs, as after an OOM kill.
"""

from __future__ import annotations

import os
import signal

import privet

KILL_AFTER_STEPS = "PRIVET_TEST_KILL_AFTER_STEPS"
KILL_IN_CHECKPOINT = "PRIVET_TEST_KILL_IN_CHECKPOINT"
KILL_IN_PREPARE = "PRIVET_TEST_KILL_IN_PREPARE"


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


class Passthrough(privet.Cleaner):
    """Returns each record unchanged; with PRIVET_TEST_KILL_IN_PREPARE=R, dies at record R."""

    Options = privet.NoOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.seen = 0

    def clean(self, record):
        self.seen += 1
        if self.seen == int(os.environ.get(KILL_IN_PREPARE, "0")):
            _die()
        return record


@privet.hookimpl
def register_cleaners(register):
    register("killer.passthrough", Passthrough)
