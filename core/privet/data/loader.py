"""Sampling and loading from the prepared cache.

The order of an epoch is a pure function of (seed, epoch) — never the state of a
DataLoader iterator's generator — and each rank takes every ``world_size``-th index
of it, so resume is exact and every example is seen once per epoch over the world.
DataLoader workers receive whole batches, so they never overlap either.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, NamedTuple, Sequence

from ..components import Augmenter, Model
from ..errors import DropRecord
from .arrow import ArrowTable


def _mix(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def epoch_order(n: int, seed: int, epoch: int, *, shuffle: bool = True,
                weights: Sequence[float] | None = None) -> list[int]:
    """The indices of one epoch: a seeded permutation, or weighted draws for balancing."""
    return _epoch_order_tensor(n, seed, epoch, shuffle=shuffle, weights=weights).tolist()


def _epoch_order_tensor(n: int, seed: int, epoch: int, *, shuffle: bool = True,
                        weights: Sequence[float] | None = None) -> Any:
    """:func:`epoch_order` as an int64 tensor: 8 bytes per example, where a list of
    Python ints takes ~44 (44 MB of the training process for a million examples)."""
    import torch

    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(_mix(seed, epoch))
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.double)
        return torch.multinomial(w, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


def balanced_weights(labels: Sequence[Any]) -> list[float]:
    """Per-example weights so each class is drawn equally often (class-weighted sampling)."""
    counts = Counter(labels)
    return [1.0 / counts[label] for label in labels]


class SampledBatch(NamedTuple):
    """The example indices of one batch (an int64 numpy array) and their epoch, which
    seeds augmentation. What the batch sampler yields and the dataset receives."""

    epoch: int
    indices: Any


class EpochBatchSampler:
    """Yields this rank's batches as :class:`SampledBatch`; can start mid-epoch."""

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool,
                 weights: Sequence[float] | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.weights = weights
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def indices(self) -> Any:
        """This rank's indices of the epoch, as an int64 tensor."""
        order = _epoch_order_tensor(self.n, self.seed, self.epoch, shuffle=self.shuffle,
                                    weights=self.weights)
        return order[self.rank::self.world_size]

    def _num_batches(self) -> tuple[int, bool]:
        """Batches per rank, and whether ranks need an even split to get that many each.

        Every rank must take the same number of steps (collectives would hang
        otherwise) while every example is still seen exactly once: when plain chunks
        would give ranks different batch counts, each rank's share is split into the
        largest rank's number of batches of near-equal size instead.
        """
        bs = self.batch_size
        counts = {-(-len(range(r, self.n, self.world_size)) // bs) for r in range(self.world_size)}
        return max(counts), len(counts) > 1

    def __len__(self) -> int:
        return self._num_batches()[0]

    def __iter__(self) -> Iterator[SampledBatch]:
        mine = self.indices().numpy()
        bs, epoch = self.batch_size, self.epoch
        nb, even_split = self._num_batches()
        for b in range(self.start_batch, nb):
            if even_split:
                lo, hi = b * len(mine) // nb, (b + 1) * len(mine) // nb
            else:
                lo, hi = b * bs, (b + 1) * bs
            yield SampledBatch(epoch, mine[lo:hi])


class Dropped(NamedTuple):
    reason: str


class Encoded(NamedTuple):
    """A whole batch already encoded and collated by :meth:`Model.encode_columns`."""

    batch: Any


def encodes_columns(model: Model) -> bool:
    """Whether ``model`` defines the columnar fast path :meth:`Model.encode_columns`."""
    return type(model).encode_columns is not Model.encode_columns


class ExampleDataset:
    """Examples from the cache -> augmenters (training only, per-sample seeds) -> encode.

    Without augmenters, a model that defines ``encode_columns`` gets the batch as
    :class:`~privet.data.columns.Columns` and returns it collated (:class:`Encoded`): no
    Python object per value on the way.
    """

    def __init__(self, table: ArrowTable, model: Model, augmenters: list[Augmenter], *,
                 seed: int, train: bool) -> None:
        self.table = table
        self.model = model
        self.augmenters = augmenters if train else []
        self.seed = seed
        self.columnar = not self.augmenters and encodes_columns(model)

    def __len__(self) -> int:
        return len(self.table)

    def __getitems__(self, sampled: SampledBatch) -> Encoded | list[Any]:
        """The encoded batch (columnar path) or each example encoded, or :class:`Dropped`."""
        epoch, indices = sampled
        encoded = self._encode_columns(indices) if self.columnar else None
        return encoded if encoded is not None else self._encode_each(epoch, indices.tolist())

    def _encode_columns(self, indices: Any) -> Encoded | None:
        """The model's columnar batch, or None if it holds an example to drop: the batch
        is then encoded example by example, so each drop is counted with its reason."""
        try:
            return Encoded(self.model.encode_columns(self.table.columns(indices)))
        except DropRecord:
            return None

    def _encode_each(self, epoch: int, order: list[int]) -> list[Any]:
        import numpy as np

        rows = self.table.rows(order)
        out: list[Any] = []
        for index, record in zip(order, rows):
            try:
                if self.augmenters:
                    rng = np.random.default_rng([self.seed, epoch, index])
                    for aug in self.augmenters:
                        record = aug.augment(record, rng)
                out.append(self.model.encode(record))
            except DropRecord as drop:
                out.append(Dropped(drop.reason))
        return out

    def __getitem__(self, item: tuple[int, int]) -> Any:
        """One example, by ``(index, epoch)``: encoded, or :class:`Dropped`."""
        index, epoch = item
        return self._encode_each(epoch, [index])[0]


class LoadedBatch(NamedTuple):
    """A collated batch (``None`` if every item was dropped) and the drops by reason."""

    batch: Any
    dropped: dict[str, int]


class Collate:
    """Filters dropped items, then calls the model's collate; never crashes on an empty batch."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def __call__(self, items: Encoded | list[Any]) -> LoadedBatch:
        if type(items) is Encoded:
            return LoadedBatch(items.batch, {})
        drops = [i for i in items if type(i) is Dropped]
        if not drops:  # the usual case: one pass, no filtering
            return LoadedBatch(self.model.collate(items), {})
        kept = [i for i in items if type(i) is not Dropped]
        dropped = dict(Counter(i.reason for i in drops))
        return LoadedBatch(self.model.collate(kept) if kept else None, dropped)


class InProcessLoader:
    """What a DataLoader with ``num_workers=0`` does: batches of the sampler, fetched and
    collated in this process. Same attributes that the engine and hooks use
    (``dataset``, ``batch_sampler``, ``collate_fn``, ``len()``)."""

    def __init__(self, dataset: ExampleDataset, batch_sampler: EpochBatchSampler,
                 collate_fn: Collate) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.collate_fn = collate_fn
        self.num_workers = 0

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[LoadedBatch]:
        dataset, collate = self.dataset, self.collate_fn
        for items in self.batch_sampler:
            # looked up on the instance each time, as the DataLoader's fetcher does
            yield collate(dataset.__getitems__(items))


def make_loader(table: ArrowTable, model: Model, augmenters: list[Augmenter], *, batch_size: int,
                seed: int, train: bool, shuffle: bool, num_workers: int,
                weights: Sequence[float] | None = None, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Any:
    """A loader over the cache whose order does not depend on any global RNG.

    With workers it is a torch DataLoader; without, an :class:`InProcessLoader` that does
    the same work without the DataLoader's per-batch machinery (tens of microseconds a
    step, a visible share of a small model's step).
    """
    import torch
    from torch.utils.data import DataLoader

    sampler = EpochBatchSampler(len(table), batch_size, seed=seed, shuffle=shuffle, weights=weights,
                                rank=rank, world_size=world_size)
    dataset = ExampleDataset(table, model, augmenters, seed=seed, train=train)
    if num_workers == 0 and not pin_memory:
        return InProcessLoader(dataset, sampler, Collate(model))
    # A private generator: creating an iterator must not advance torch's global RNG,
    # or a resumed run would see different dropout masks than an uninterrupted one.
    generator = torch.Generator().manual_seed(_mix(seed, 99991))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,  # type: ignore[arg-type]
                      collate_fn=Collate(model), generator=generator, pin_memory=pin_memory,
                      multiprocessing_context="fork" if num_workers > 0 else None)
