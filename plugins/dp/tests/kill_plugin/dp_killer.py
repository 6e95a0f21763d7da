"""Test-only: SIGKILL this process after N optimizer steps (``PRIVET_TEST_DP_KILL_AFTER=N``).

Loaded with ``plugins.paths`` by the kill/resume test. The kill comes from a stop check,
which the loop calls right after each optimizer step: after the weights, the noise and the
accountant moved, before anything is checkpointed. SIGKILL runs no cleanup at all.
"""

from __future__ import annotations

import os
import signal

import privet


@privet.hookimpl
def wrap_training(run, objects):
    after = int(os.environ.get("PRIVET_TEST_DP_KILL_AFTER", "0"))
    if after <= 0:
        return
    done = [0]

    def kill() -> None:
        done[0] += 1
        if done[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)

    objects.stop_checks.append(kill)
