"""Poisson sampling, as DP-SGD's accounting assumes, in place of the engine's sampler.

Every optimizer step takes each training example independently with probability
``sample_rate`` (so batch sizes vary). The draws of a step are a pure function of
(seed, epoch, step, rank), like the engine's epoch order: a resumed run draws exactly the
batches the killed one would have, with no generator state to save. A distributed run
samples each rank's share of the examples (every ``world_size``-th, as Opacus'
``DistributedPoissonBatchSampler`` does) with the same rate.

With gradient accumulation a step's sample is cut into ``accumulate`` micro-batches
(Opacus' virtual steps), so the loop's accumulation window is exactly one Poisson batch.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np


def _mix(*parts: int) -> int:
    """One 63-bit seed from several integers (a fixed polynomial hash)."""
    out = 0x5EED
    for p in parts:
        out = (out * 1_000_003 + int(p) + 17) % (2**63 - 1)
    return out


class SampledBatch(NamedTuple):
    """What the engine's dataset takes: the epoch (it seeds augmentation) and indices."""

    epoch: int
    indices: Any


class EmptyBatch(NamedTuple):
    """A micro-batch that drew no example: the loop skips it (no batch, nothing dropped)."""

    batch: Any = None
    dropped: dict = {}


class PoissonBatchSampler:
    """Yields ``steps_per_epoch * accumulate`` micro-batches per epoch for this rank.

    ``steps_per_epoch`` is ``ceil(1 / sample_rate)``: one epoch sees each example once
    in expectation. Same interface as the engine's sampler (``set_epoch(epoch,
    start_batch)``, ``len``), so the loop needs no change.
    """

    def __init__(self, n: int, sample_rate: float, steps_per_epoch: int, accumulate: int, *,
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n = n
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self.accumulate = accumulate
        self.seed = seed
        #: what the draws derive from: the seed, or the run's secret (see secrecy.py)
        self.secret = seed
        self.rank = rank
        self.world_size = world_size
        self.mine = np.arange(rank, n, world_size, dtype=np.int64)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulate

    def step_sample(self, epoch: int, step: int) -> np.ndarray:
        """This rank's indices for one optimizer step: each kept with ``sample_rate``."""
        rng = np.random.Generator(np.random.PCG64(_mix(self.secret, epoch, step, self.rank)))
        keep = rng.random(len(self.mine)) < self.sample_rate
        picked = self.mine[keep]
        rng.shuffle(picked)  # micro-batches of a mixed order, not sorted by index
        return picked

    def __iter__(self) -> Iterator[SampledBatch]:
        acc, epoch = self.accumulate, self.epoch
        for b in range(self.start_batch, len(self)):
            step, part = divmod(b, acc)
            picked = self.step_sample(epoch, step)
            lo, hi = part * len(picked) // acc, (part + 1) * len(picked) // acc
            yield SampledBatch(epoch, picked[lo:hi])


class _NonEmpty:
    """The sampler's non-empty micro-batches: what a worker DataLoader fetches."""

    def __init__(self, sampler: PoissonBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[SampledBatch]:
        return (s for s in self.sampler if len(s.indices))

    def __len__(self) -> int:
        return len(self.sampler)


class PoissonLoader:
    """The engine's dataset and collate over a :class:`PoissonBatchSampler`.

    An empty micro-batch becomes :class:`EmptyBatch` without reaching the model's
    ``collate``. With ``num_workers`` the non-empty ones are fetched by a torch
    DataLoader (same workers, private generator, pin memory) and interleaved in order.
    """

    def __init__(self, original: Any, sampler: PoissonBatchSampler) -> None:
        self.dataset = original.dataset
        self.collate_fn = original.collate_fn
        self.batch_sampler = sampler
        self.num_workers = getattr(original, "num_workers", 0)
        self._workers = None
        if self.num_workers > 0 or getattr(original, "pin_memory", False):
            self._workers = _worker_loader(original, _NonEmpty(sampler))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        if self._workers is None:
            for sampled in self.batch_sampler:
                yield (self.collate_fn(self.dataset.__getitems__(sampled)) if len(sampled.indices)
                       else EmptyBatch())
            return
        fetched = iter(self._workers)
        for sampled in list(self.batch_sampler):
            yield next(fetched) if len(sampled.indices) else EmptyBatch()


def _worker_loader(original: Any, batch_sampler: Any) -> Any:
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(_mix(batch_sampler.sampler.seed, 99991))
    return DataLoader(original.dataset, batch_sampler=batch_sampler, num_workers=original.num_workers,
                      collate_fn=original.collate_fn, generator=generator,
                      pin_memory=getattr(original, "pin_memory", False),
                      multiprocessing_context="fork" if original.num_workers > 0 else None)


def plan_poisson(n: int, batch_size: int, accumulate: int, world_size: int) -> tuple[float, int]:
    """(sample rate, steps per epoch): the expected logical batch is the configured global
    batch (``batch_size * accumulate * world_size``), and an epoch is ``ceil(1/q)`` steps."""
    global_batch = batch_size * accumulate * world_size
    rate = min(1.0, global_batch / n)
    return rate, -(-n // global_batch)


__all__ = ["EmptyBatch", "PoissonBatchSampler", "PoissonLoader", "plan_poisson"]
