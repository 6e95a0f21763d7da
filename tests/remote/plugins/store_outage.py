"""Test-only: the object store goes away after a chosen checkpoint (a network outage).

Inert unless ``PRIVET_TEST_OUTAGE_AFTER=K`` is set: after the K-th complete checkpoint,
every request goes to ``PRIVET_TEST_DEAD_ENDPOINT`` (a closed port: connection refused),
with 2 retries 10 ms apart, so the run's next upload fails the way a lost network does.
"""

from __future__ import annotations

import os

import privet
from privet import objectstore

OUTAGE_AFTER = "PRIVET_TEST_OUTAGE_AFTER"
_seen = [0]


@privet.hookimpl
def after_checkpoint(run, path, step):
    after = int(os.environ.get(OUTAGE_AFTER, "0"))
    if after <= 0:
        return
    _seen[0] += 1
    if _seen[0] == after:
        objectstore.configure({"endpoint": os.environ["PRIVET_TEST_DEAD_ENDPOINT"],
                               "retries": 2, "backoff_s": 0.01})
