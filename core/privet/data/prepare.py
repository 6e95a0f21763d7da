"""Preparation: source -> split -> cleaners (fitted on train) -> model.fit -> examples -> Arrow cache.

The cache is keyed by a fingerprint of the source files, the data and model settings and
the seed, so a second run over the same data reuses it. Raw records are never written:
each fitting cleaner gets its own streaming pass over the source, so nothing a cleaner
removes (PII, say) reaches the disk.
"""

from __future__ import annotations

import copy
import contextlib
import hashlib
import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import attrs

from ..components import BadRecord, Cleaner, Model, Record, Source
from ..config import DataConfig
from ..errors import DataError, DropRecord, PluginError
from ..storage import Storage
from .arrow import ArrowShardWriter, ArrowTable
from .versions import code_version

SPLITS = ("train", "val", "test")
_FIELD_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CACHE_VERSION = 2
#: Records cleaned together (Cleaner.clean_batch): large enough that a cleaner's batch
#: work pays, small enough that memory stays flat.
CLEAN_BATCH = 512
#: Largest float32: a bigger number becomes inf once a model makes a tensor of it.
FLOAT32_MAX = 3.4028234663852886e38


def file_fingerprint(path: str, *, full_hash_below: int = 1 << 20) -> dict[str, Any]:
    """Size and mtime of a file, plus a content hash when it is small (cheap on big data)."""
    st = os.stat(path)
    out: dict[str, Any] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if st.st_size <= full_hash_below:
        out["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def split_of(ordinal: int, seed: int, val: float, test: float) -> str:
    """Deterministic random split of the ``ordinal``-th record (streaming: no count needed)."""
    h = hashlib.blake2b(f"{seed}:{ordinal}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2**64
    if u < val:
        return "val"
    if u < val + test:
        return "test"
    return "train"


def _bad_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "is not finite"
    if abs(value) > FLOAT32_MAX:
        return "overflows float32 (largest 3.4e38)"
    return None


def non_finite(record: Record) -> str | None:
    """Why a record holds a number no model can train on (NaN, inf, beyond float32), or None.

    Looks at top-level numbers and lists of numbers (feature vectors): a model turns them
    into float32 tensors, where 1e308 becomes inf and the loss NaN many steps later.
    """
    for key, value in record.items():
        why = _bad_number(value)
        if why is not None:
            return f"field {key!r}: {value!r} {why}"
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
            bad = _first_bad_number(value)
            if bad is not None:
                return f"field {key!r}: {bad[0]!r} {bad[1]}"
    return None


def _first_bad_number(values: list[Any] | tuple[Any, ...]) -> tuple[Any, str] | None:
    if len(values) > 64:  # long vectors: one numpy pass instead of a Python loop
        import numpy as np

        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            arr = None
        if arr is not None and arr.ndim == 1 and np.isfinite(arr).all() \
                and float(np.abs(arr).max()) <= FLOAT32_MAX:
            return None
    for item in values:
        why = _bad_number(item)
        if why is not None:
            return item, why
    return None


@attrs.define
class DropCounter:
    """Dropped records by reason, with the first few locations of each for the report."""

    counts: Counter = attrs.field(factory=Counter)
    examples: dict[str, list[str]] = attrs.field(factory=dict)
    #: Records that were unusable (vs. filtered on purpose, like duplicates).
    bad: int = 0

    def add(self, reason: str, where: str, *, bad: bool = True) -> None:
        self.counts[reason] += 1
        self.bad += int(bad)
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@attrs.define
class Prepared:
    """What preparation produced: example tables per split and the fitted states."""

    cache: Storage
    fingerprint: str
    tables: dict[str, ArrowTable]
    meta: dict[str, Any]
    reused: bool


class Preparer:
    """Runs the preparation of one pipeline's data (on rank 0 only in a distributed run)."""

    def __init__(self, data: DataConfig, source: Source, cleaners: list[Cleaner], model: Model,
                 *, seed: int, fingerprint_extra: dict[str, Any],
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.data = data
        self.source = source
        self.cleaners = cleaners
        self.model = model
        self.seed = seed
        self.fingerprint_extra = fingerprint_extra
        self.log = log
        #: the cache's cipher (set by :meth:`prepare` from the storage module), or None
        self.cipher: Any = None

    # -- fingerprint --------------------------------------------------------------------------

    def fingerprint(self) -> tuple[str, Any]:
        """A key for the cache; content hashes only for small files of small data sets.

        A folder of a million images is keyed by sizes and mtimes, so a second run does
        not read the whole data set again just to find its cache.
        """
        paths = self.source.files()
        hash_below = (1 << 20) if len(paths) <= 2000 else -1
        files = [file_fingerprint(f, full_hash_below=hash_below) for f in paths]
        extra = dict(self.fingerprint_extra)
        if self.cipher is not None:  # an encrypted cache is another cache, one per key
            extra["encryption"] = self.cipher.key_id
        blob = json.dumps({"version": CACHE_VERSION, "files": files, "seed": self.seed,
                           "code": self.code_versions(), **extra},
                          sort_keys=True, default=str)
        if len(files) > 1000:  # keep meta.json small: a digest stands for the list
            listing = json.dumps(files, sort_keys=True, default=str).encode()
            return hashlib.sha256(blob.encode()).hexdigest()[:20], {
                "count": len(files), "sha256": hashlib.sha256(listing).hexdigest()}
        return hashlib.sha256(blob.encode()).hexdigest()[:20], files

    def code_versions(self) -> list[dict[str, Any]]:
        """Each data component's code version: a plugin's new code is a new cache."""
        return [code_version(type(c)) for c in (self.source, *self.cleaners, self.model)]

    # -- streaming passes -------------------------------------------------------------------------

    def _located(self, shard: Any) -> Iterator[tuple[str | None, Any]]:
        """``(location or None, item)``: sources built on :mod:`privet.io` name each line."""
        read_located = getattr(self.source, "read_located", None)
        if callable(read_located):
            yield from read_located(shard)
        else:
            for item in self.source.read(shard):
                yield None, item

    def _raw(self, drops: DropCounter | None, total: list[int]) -> Iterator[tuple[str, str, Record]]:
        """(split, where, record) for every readable record, in source order.

        A source drops an item by yielding a :class:`BadRecord` (bad input) or a
        :class:`DropRecord` (``bad=False``: left out on purpose, not held against
        ``data.max_bad_fraction``). Numbers that are not finite or overflow float32 are
        bad input, caught here, before any cleaner fits statistics on them.
        """
        split = self.data.split
        ordered_count = self._count() if split.method == "ordered" else 0
        ordinal = 0
        for shard in self.source.shards():
            name = Path(shard.path).name
            for location, item in self._located(shard):
                total[0] += 1
                if isinstance(item, BadRecord):
                    self._bad(drops, item.reason, item.location or location or name, item.detail)
                    continue
                where = location or f"{name} record {ordinal + 1}"
                if isinstance(item, DropRecord):
                    self._bad(drops, item.reason, where, item.detail, bad=item.bad)
                    continue
                ordinal += 1
                problem = non_finite(item) if isinstance(item, dict) else None
                if problem is not None:
                    self._bad(drops, "non_finite_value", where, problem)
                    continue
                if split.method == "random":
                    part = split_of(ordinal - 1, self.seed, split.val, split.test)
                elif split.method == "ordered":
                    frac = (ordinal - 1) / max(1, ordered_count)
                    part = ("train" if frac < 1 - split.val - split.test
                            else "val" if frac < 1 - split.test else "test")
                else:
                    value = item.get(split.field) if isinstance(item, dict) else None
                    part = _FIELD_SPLITS.get(str(value).lower()) if value is not None else None
                    if part is None:
                        self._bad(drops, "bad_split_value", where,
                                  f"{split.field}={value!r}; expected train/val/test")
                        continue
                yield part, where, item

    def _count(self) -> int:
        return sum(1 for shard in self.source.shards() for item in self.source.read(shard)
                   if not isinstance(item, (BadRecord, DropRecord)))

    def _bad(self, drops: DropCounter | None, reason: str, where: str, detail: str = "",
             *, bad: bool = True) -> None:
        if not bad:
            if drops is not None:
                drops.add(reason, f"{where}: {detail}" if detail else where, bad=False)
            return
        if self.data.on_error == "fail":
            extra = f" ({detail})" if detail else ""
            raise DataError(f"{where}: bad record: {reason}{extra}; fix the data or set "
                            f"data.on_error: drop")
        if drops is not None:
            drops.add(reason, f"{where}: {detail}" if detail else where)

    def _clean_batch(self, records: list[Record], upto: int) -> list[Record | DropRecord | str]:
        """Each record through ``cleaners[:upto]``, cleaner by cleaner over the whole list.

        Returns per record the cleaned record, the :class:`DropRecord` a cleaner gave, or
        the name of the cleaner that filtered it out. A cleaner sees the survivors of the
        earlier ones in source order, as it would one record at a time.
        """
        outcomes: list[Record | DropRecord | str] = list(records)
        alive = list(range(len(records)))
        for cleaner in self.cleaners[:upto]:
            if not alive:
                break
            results = cleaner.clean_batch([outcomes[i] for i in alive])  # type: ignore[misc]
            if len(results) != len(alive):
                raise PluginError(f"cleaner {cleaner.name}: clean_batch returned {len(results)} "
                                  f"results for {len(alive)} records; return one per record")
            survivors = []
            for i, out in zip(alive, results):
                if isinstance(out, DropRecord):
                    outcomes[i] = out
                elif out is None:
                    outcomes[i] = cleaner.name
                else:
                    outcomes[i] = out
                    survivors.append(i)
            alive = survivors
        return outcomes

    def _flush(self, events: list[tuple[Any, ...]], upto: int,
               drops: DropCounter | None) -> Iterator[tuple[str, Record]]:
        """Clean the batched records, then report drops and yield records in source order."""
        records = [e[3] for e in events if e[0] == "record"]
        outcomes = iter(self._clean_batch(records, upto))
        batch, events[:] = list(events), []
        for event in batch:
            if event[0] == "drop":  # dropped by the source while the batch filled
                if drops is not None:
                    drops.add(event[1], event[2], bad=event[3])
                continue
            _tag, part, where, _record = event
            out = next(outcomes)
            if isinstance(out, DropRecord):
                self._bad(drops, out.reason, where, out.detail, bad=out.bad)
            elif isinstance(out, str):
                self._bad(drops, f"filtered_by_{out}", where, bad=False)
            else:
                yield part, out

    def _cleaned(self, upto: int, only: str | None, drops: DropCounter | None,
                 total: list[int], on_start: Callable[[], None] = lambda: None
                 ) -> Iterator[tuple[str, Record]]:
        """Cleaned ``(split, record)`` in source order, in batches of CLEAN_BATCH (or a shard).

        Drops are counted in source order, as if each record went through the cleaners
        alone: the source's drops wait in ``events`` until the batch is cleaned, and a
        source error is raised only after the records read before it.
        """
        for cleaner in self.cleaners[:upto]:
            cleaner.start_pass()
        on_start()
        events: list[tuple[Any, ...]] = []
        raw = self._raw(_Deferred(events) if drops is not None else None, total)
        size = max(1, min(CLEAN_BATCH, self.data.shard_rows))  # at most one shard in memory
        done = False
        while not done:
            done, n = True, 0
            try:
                for part, where, record in raw:
                    if only is not None and part != only:
                        continue
                    path = record.get("path")
                    if isinstance(path, str) and path:  # name the file itself when the record has one
                        where = path
                    events.append(("record", part, where, record))
                    n += 1
                    if n >= size:
                        done = False
                        break
            except DataError:
                yield from self._flush(events, upto, drops)  # errors of earlier records first
                raise
            yield from self._flush(events, upto, drops)

    # -- the whole preparation ------------------------------------------------------------------

    def prepare(self, cache_root: Path) -> Prepared:
        """The prepared cache for this pipeline's data: reused when complete, else made.

        It is made in a ``.tmp-FINGERPRINT-PID`` folder that is renamed into place only
        when ``meta.json`` is written: a process killed mid-way leaves no folder that
        looks complete, and the next run prepares again (and removes the leftovers).
        """
        root = Storage(cache_root)  # encrypted when the run registered its cipher for it
        self.cipher = root.cipher
        fp, files = self.fingerprint()
        cache = root.sub(fp)
        if cache.exists("meta.json"):
            return self._reuse(cache, fp)
        started = time.perf_counter()
        _remove_leftovers(root)
        work_name = f".tmp-{fp}-{os.getpid()}"
        root.remove(work_name)
        root.makedirs(work_name)
        work = root.sub(work_name)
        try:
            meta = self._build(work, fp, files)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            work.write_json("meta.json", meta)  # written last: marks the folder complete
            if cache.exists("meta.json"):  # another process finished the same data first
                root.remove(work_name)
                return self._reuse(cache, fp)
            root.remove(fp)  # an incomplete folder from an older Privet
            root.rename(work_name, fp)
        except BaseException:
            with contextlib.suppress(OSError):
                root.remove(work_name)
            raise
        self.log(f"data: prepared {meta['kept']} records ({meta['counts']}), dropped "
                 f"{sum(meta['dropped'].values())} in {meta['seconds']} s")
        return Prepared(cache, fp, self._open(cache, meta), meta, False)

    def _reuse(self, cache: Storage, fp: str) -> Prepared:
        meta = cache.read_json("meta.json")
        cache.touch("meta.json")  # its last use, for privet cache list / clear --older-than
        self._load_states(meta)
        self.log(f"data: reusing prepared cache {cache.root}")
        return Prepared(cache, fp, self._open(cache, meta), meta, True)

    def _fit_cleaners(self) -> None:
        """Fit cleaners in order, each on train records passed through the earlier ones."""
        for i, cleaner in enumerate(self.cleaners):
            if cleaner.needs_fit:
                self.log(f"data: fitting cleaner {cleaner.name}")
                cleaner.fit(_Reiterable(lambda i=i: (r for _p, r in self._cleaned(i, "train", None, [0]))))

    def _build(self, cache: Storage, fp: str, files: Any) -> dict[str, Any]:
        """Every pass of the preparation, written into ``cache``; returns its meta."""
        self._fit_cleaners()
        drops = DropCounter()
        total = [0]
        counters: list[Any] = []
        writers = {s: ArrowShardWriter(cache.sub("records"), s, self.data.shard_rows) for s in SPLITS}
        snapshot = lambda: counters.extend(copy.deepcopy(c.report()) for c in self.cleaners)  # noqa: E731
        for part, record in self._cleaned(len(self.cleaners), None, drops, total, snapshot):
            writers[part].add(record)
        record_files = {s: w.close() for s, w in writers.items()}
        self._check_bad_fraction(drops, total[0])
        if writers["train"].rows == 0:
            raise DataError(f"no training records left after cleaning ({total[0]} read, "
                            f"{drops.total} dropped: {dict(drops.counts)}); check the source and "
                            f"cleaner options")
        records = {s: ArrowTable(fs, cipher=cache.cipher) for s, fs in record_files.items()}
        self.model.fit(_Reiterable(records["train"].iter_rows))
        example_files = dict(record_files)
        if type(self.model).examples is not Model.examples:
            for s in SPLITS:
                w = ArrowShardWriter(cache.sub("examples"), s, self.data.shard_rows)
                for ex in self.model.examples(_Reiterable(records[s].iter_rows), s):
                    w.add(ex)
                example_files[s] = w.close()
        # counts of the writing pass alone: fitting passes ran the earlier cleaners too
        reports = {f"{i}:{c.name}": counts_since(c.report(), before)
                   for i, (c, before) in enumerate(zip(self.cleaners, counters))}
        return {
            "fingerprint": fp,
            "files": files,
            "code": self.code_versions(),
            "created": time.time(),
            "read": total[0],
            "kept": sum(w.rows for w in writers.values()),
            "counts": {s: writers[s].rows for s in SPLITS},
            "examples": {s: ArrowTable(example_files[s], cipher=cache.cipher).num_rows for s in SPLITS},
            "dropped": dict(drops.counts),
            "bad": drops.bad,
            "dropped_examples": drops.examples,
            "cleaners": {k: v for k, v in reports.items() if v},
            "record_files": {s: [str(Path(f).relative_to(cache.root)) for f in fs] for s, fs in record_files.items()},
            "example_files": {s: [str(Path(f).relative_to(cache.root)) for f in fs] for s, fs in example_files.items()},
            "cleaner_states": [c.state_dict() for c in self.cleaners],
            "model_state": self.model.state_dict(),
        }

    def _check_bad_fraction(self, drops: DropCounter, total: int) -> None:
        if total and drops.bad / total > self.data.max_bad_fraction:
            top = ", ".join(f"{r}: {n}" for r, n in drops.counts.most_common(3))
            raise DataError(f"{drops.bad} of {total} records are bad ({drops.bad / total:.1%} > "
                            f"data.max_bad_fraction {self.data.max_bad_fraction}; {top}); fix the "
                            f"data or raise data.max_bad_fraction")

    def _load_states(self, meta: dict[str, Any]) -> None:
        for cleaner, state in zip(self.cleaners, meta["cleaner_states"]):
            cleaner.load_state_dict(state)
        self.model.load_state_dict(meta["model_state"])

    @staticmethod
    def _open(cache: Storage, meta: dict[str, Any]) -> dict[str, ArrowTable]:
        return {s: ArrowTable([str(cache.path(f)) for f in meta["example_files"][s]], cipher=cache.cipher)
                for s in SPLITS}


class _Deferred:
    """Stands for the DropCounter while a batch fills: the source's drops become events,
    replayed in source order between the batch's own drops."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events

    def add(self, reason: str, where: str, *, bad: bool = True) -> None:
        self.events.append(("drop", reason, where, bad))


class _Reiterable:
    """Wraps a generator factory so fit() can iterate the data more than once."""

    def __init__(self, factory: Callable[[], Iterable[Record]]) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[Record]:
        return iter(self._factory())


def counts_since(after: Any, before: Any) -> Any:
    """``after - before`` for the numbers of a cleaner's report (nested dicts too).

    A cleaner's counters keep growing over every pass that runs it (a fitting pass of a
    later cleaner streams the data through it again); the report must say what happened
    to the data that was written, which is the difference over the writing pass.
    """
    if isinstance(after, dict):
        prior = before if isinstance(before, dict) else {}
        return {k: counts_since(v, prior.get(k)) for k, v in after.items()}
    numeric = (int, float)
    if isinstance(after, numeric) and isinstance(before, numeric) and not isinstance(after, bool):
        return after - before
    return after


def remove_cache(cache: Storage, run_storage: Storage | None = None) -> None:
    """Delete a prepared cache folder (and the run folder's ``cache`` link to it)."""
    Storage(cache.root.parent, cipher=cache.cipher).remove(cache.root.name)
    if run_storage is not None:
        run_storage.remove("cache")


def _remove_leftovers(cache_root: Storage) -> None:
    """Remove the ``.tmp-FP-PID`` folders of preparations whose process is gone."""
    for name in cache_root.listdir():
        if not (name.startswith(".tmp-") and cache_root.path(name).is_dir()):
            continue
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                cache_root.remove(name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not preparing that folder any more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
