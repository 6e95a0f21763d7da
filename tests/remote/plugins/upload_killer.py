"""Test-only: SIGKILL the ``privet run`` process in the middle of a checkpoint upload.

Inert unless ``PRIVET_TEST_KILL_IN_UPLOAD=K`` is set: the process dies right after it
uploaded ``model.safetensors`` of its K-th checkpoint, before ``state.pt`` and the
``state.json`` marker, as a machine lost mid-upload would leave it.
"""

from __future__ import annotations

import os
import signal

import privet
from privet import objectstore

KILL_IN_UPLOAD = "PRIVET_TEST_KILL_IN_UPLOAD"


@privet.hookimpl
def before_run(run):
    target = int(os.environ.get(KILL_IN_UPLOAD, "0"))
    if target <= 0 or getattr(objectstore.put_bytes, "_killer", False):
        return
    real = objectstore.put_bytes
    seen = [0]

    def put_bytes(url, data):
        real(url, data)
        if "/checkpoints/step-" in url and url.endswith("/model.safetensors"):
            seen[0] += 1
            if seen[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)

    put_bytes._killer = True
    objectstore.put_bytes = put_bytes
