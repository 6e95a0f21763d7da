"""Request limits: per-subject rates, concurrency with back-pressure, body size.

Each refusal is cheap and happens before any model work: a rate-limited or
back-pressured request never reaches a batch.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..errors import UsageError


class RateLimitExceeded(Exception):
    """A subject over its rate; ``retry_after`` whole seconds until a request is allowed."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class SubjectRateLimiter:
    """``N/second|minute|hour`` per subject, as a moving window of the ``limits`` library.

    A moving window behaves as a bucket of N tokens, each returning one window after it
    was spent: a burst of N passes, the next waits. Every subject has its own window, so
    one noisy caller never slows the others. State lives in memory (one server process).
    """

    def __init__(self, rate: str) -> None:
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        try:
            self.item = parse(rate)
        except ValueError:
            raise UsageError(f"--rate-limit {rate!r}: write it as N/second, N/minute or N/hour") from None
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, subject: str) -> None:
        """Spend one token of ``subject``'s bucket, or raise :class:`RateLimitExceeded`."""
        if self.limiter.hit(self.item, subject):
            return
        reset = self.limiter.get_window_stats(self.item, subject).reset_time
        raise RateLimitExceeded(max(1, math.ceil(reset - time.time())))


class ConcurrencyGate:
    """At most ``limit`` requests in flight; the next is refused (503) instead of queued,
    so a saturated server answers at once and a load balancer can send it elsewhere."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        # only called from the event loop's thread: no lock needed
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class BodyTooLarge(Exception):
    """The request body is over the configured size."""


async def read_body(receive_stream: Any, max_bytes: int) -> bytes:
    """The request body, refused as soon as it grows past ``max_bytes`` (a chunked body
    without Content-Length is counted as it arrives, never buffered whole first)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in receive_stream:
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)
