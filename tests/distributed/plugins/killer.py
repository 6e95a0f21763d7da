"""Test plugin: SIGKILLs one worker once, after epoch $KILL_EPOCH, on rank $KILL_RANK."""

import os
import signal

import privet


@privet.hookimpl
def after_epoch(run, epoch, metrics):
    marker = os.environ.get("KILL_MARKER")
    if (marker and not os.path.exists(marker) and epoch == int(os.environ.get("KILL_EPOCH", "0"))
            and run.rank == int(os.environ.get("KILL_RANK", "1"))):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
