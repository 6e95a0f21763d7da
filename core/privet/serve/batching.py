"""Dynamic micro-batching: concurrent requests for one model share a model call.

One collector task per model takes the first waiting request, then keeps taking more
until ``max_batch`` records are gathered or ``max_wait`` has passed, and runs them as one
batch in the model's worker thread. While a batch runs, the next one fills up, so under
load batches grow by themselves and at low load a request waits at most ``max_wait``.
With ``max_batch`` 1 every request runs on its own, concurrently, in a thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any, Callable

import attrs

from .models import ServedModel


@attrs.define
class _Job:
    records: list[Any]
    future: asyncio.Future


class MicroBatcher:
    """Collects requests for ``model`` into batches of at most ``max_batch`` records."""

    def __init__(self, model: ServedModel, *, max_batch: int, max_wait_s: float,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.on_batch = on_batch or (lambda name, size: None)
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        # batched: one thread per model, batches run one at a time and ORT uses the cores;
        # unbatched: requests run side by side. A request that times out stops waiting at
        # once (an executor future can be abandoned; its thread finishes the call)
        threads = 1 if self.batching else min(32, (os.cpu_count() or 1) + 4)
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"privet-{model.name}")

    @property
    def batching(self) -> bool:
        return self.max_batch > 1

    async def start(self) -> None:
        if self.batching:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._collect(), name=f"batcher-{self.model.name}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, records: list[Any]) -> Any:
        """The request's entries (or :class:`~privet.serve.models.RecordErrors`)."""
        if not self.batching:
            self.on_batch(self.model.name, len(records))
            loop = asyncio.get_running_loop()
            return (await loop.run_in_executor(self.executor, self.model.run_jobs, [records]))[0]
        assert self.queue is not None
        job = _Job(records, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].records)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(job)
                size += len(job.records)
            await self._run(loop, [j for j in jobs if not j.future.done()])

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        if not jobs:  # every request of this batch timed out while waiting
            return
        self.on_batch(self.model.name, sum(len(j.records) for j in jobs))
        try:
            outcomes = await loop.run_in_executor(self.executor, self.model.run_jobs,
                                                  [j.records for j in jobs])
        except Exception as err:  # a bug, not a record: fail these requests, keep serving
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        for j, outcome in zip(jobs, outcomes):
            if not j.future.done():  # a request that timed out no longer waits
                j.future.set_result(outcome)
