"""Preparation: source -> split -> cleaners (fitted on train) -> model.fit -> examples -> Arrow cache.

The cache is keyed by a fingerprint of the source files, the data and model settings and
the seed, so a second run over the same data reuses it. Raw records are never written:
each fitting cleaner gets its own streaming pass over the source, so nothing a cleaner
removes (PII, say) reaches the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import attrs

from ..components import BadRecord, Cleaner, Model, Record, Source
from ..config import DataConfig
from ..errors import DataError, DropRecord
from ..storage import Storage
from .arrow import ArrowShardWriter, ArrowTable

SPLITS = ("train", "val", "test")
_FIELD_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CACHE_VERSION = 1


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

    # -- fingerprint --------------------------------------------------------------------------

    def fingerprint(self) -> tuple[str, Any]:
        """A key for the cache; content hashes only for small files of small data sets.

        A folder of a million images is keyed by sizes and mtimes, so a second run does
        not read the whole data set again just to find its cache.
        """
        paths = self.source.files()
        hash_below = (1 << 20) if len(paths) <= 2000 else -1
        files = [file_fingerprint(f, full_hash_below=hash_below) for f in paths]
        blob = json.dumps({"version": CACHE_VERSION, "files": files, "seed": self.seed,
                           **self.fingerprint_extra}, sort_keys=True, default=str)
        if len(files) > 1000:  # keep meta.json small: a digest stands for the list
            listing = json.dumps(files, sort_keys=True, default=str).encode()
            return hashlib.sha256(blob.encode()).hexdigest()[:20], {
                "count": len(files), "sha256": hashlib.sha256(listing).hexdigest()}
        return hashlib.sha256(blob.encode()).hexdigest()[:20], files

    # -- streaming passes -------------------------------------------------------------------------

    def _raw(self, drops: DropCounter | None, total: list[int]) -> Iterator[tuple[str, str, Record]]:
        """(split, where, record) for every readable record, in source order."""
        split = self.data.split
        ordered_count = self._count() if split.method == "ordered" else 0
        ordinal = 0
        for shard in self.source.shards():
            name = Path(shard.path).name
            for item in self.source.read(shard):
                total[0] += 1
                if isinstance(item, BadRecord):
                    self._bad(drops, item.reason, item.location or name, item.detail)
                    continue
                where = f"{name} record {ordinal + 1}"
                if split.method == "random":
                    part = split_of(ordinal, self.seed, split.val, split.test)
                elif split.method == "ordered":
                    frac = ordinal / max(1, ordered_count)
                    part = ("train" if frac < 1 - split.val - split.test
                            else "val" if frac < 1 - split.test else "test")
                else:
                    value = item.get(split.field) if isinstance(item, dict) else None
                    part = _FIELD_SPLITS.get(str(value).lower()) if value is not None else None
                    if part is None:
                        ordinal += 1
                        self._bad(drops, "bad_split_value", where,
                                  f"{split.field}={value!r}; expected train/val/test")
                        continue
                ordinal += 1
                yield part, where, item

    def _count(self) -> int:
        return sum(1 for shard in self.source.shards() for item in self.source.read(shard)
                   if not isinstance(item, BadRecord))

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

    def _clean(self, record: Record, upto: int, drops: DropCounter | None,
               where: str) -> Record | None:
        path = record.get("path")
        if isinstance(path, str) and path:  # name the file itself when the record has one
            where = path
        for cleaner in self.cleaners[:upto]:
            try:
                out = cleaner.clean(record)
            except DropRecord as drop:
                self._bad(drops, drop.reason, where, drop.detail, bad=drop.bad)
                return None
            if out is None:
                self._bad(drops, f"filtered_by_{cleaner.name}", where, bad=False)
                return None
            record = out
        return record

    def _cleaned(self, upto: int, only: str | None, drops: DropCounter | None,
                 total: list[int]) -> Iterator[tuple[str, Record]]:
        for cleaner in self.cleaners[:upto]:
            cleaner.start_pass()
        for part, where, record in self._raw(drops, total):
            if only is not None and part != only:
                continue
            out = self._clean(record, upto, drops, where)
            if out is not None:
                yield part, out

    # -- the whole preparation ------------------------------------------------------------------

    def prepare(self, cache_root: Path) -> Prepared:
        fp, files = self.fingerprint()
        cache = Storage(cache_root / fp)
        if cache.exists("meta.json"):
            meta = cache.read_json("meta.json")
            self._load_states(meta)
            self.log(f"data: reusing prepared cache {cache.root}")
            return Prepared(cache, fp, self._open(cache, meta), meta, True)
        started = time.perf_counter()
        cache.makedirs()
        cache.clean_partial()
        # fit cleaners in order, each on train records passed through the earlier ones
        for i, cleaner in enumerate(self.cleaners):
            if cleaner.needs_fit:
                self.log(f"data: fitting cleaner {cleaner.name}")
                cleaner.fit(_Reiterable(lambda i=i: (r for _p, r in self._cleaned(i, "train", None, [0]))))
        drops = DropCounter()
        total = [0]
        writers = {s: ArrowShardWriter(cache.path("records"), s, self.data.shard_rows) for s in SPLITS}
        for part, record in self._cleaned(len(self.cleaners), None, drops, total):
            writers[part].add(record)
        record_files = {s: w.close() for s, w in writers.items()}
        kept = sum(w.rows for w in writers.values())
        self._check_bad_fraction(drops, total[0])
        if writers["train"].rows == 0:
            raise DataError(f"no training records left after cleaning ({total[0]} read, "
                            f"{drops.total} dropped: {dict(drops.counts)}); check the source and "
                            f"cleaner options")
        records = {s: ArrowTable(fs) for s, fs in record_files.items()}
        self.model.fit(_Reiterable(records["train"].iter_rows))
        example_files = dict(record_files)
        if type(self.model).examples is not Model.examples:
            for s in SPLITS:
                w = ArrowShardWriter(cache.path("examples"), s, self.data.shard_rows)
                for ex in self.model.examples(_Reiterable(records[s].iter_rows), s):
                    w.add(ex)
                example_files[s] = w.close()
        meta = {
            "fingerprint": fp,
            "files": files,
            "created": time.time(),
            "seconds": round(time.perf_counter() - started, 3),
            "read": total[0],
            "kept": kept,
            "counts": {s: writers[s].rows for s in SPLITS},
            "examples": {s: ArrowTable(example_files[s]).num_rows for s in SPLITS},
            "dropped": dict(drops.counts),
            "bad": drops.bad,
            "dropped_examples": drops.examples,
            "cleaners": {f"{i}:{c.name}": c.report() for i, c in enumerate(self.cleaners) if c.report()},
            "record_files": {s: [str(Path(f).relative_to(cache.root)) for f in fs] for s, fs in record_files.items()},
            "example_files": {s: [str(Path(f).relative_to(cache.root)) for f in fs] for s, fs in example_files.items()},
            "cleaner_states": [c.state_dict() for c in self.cleaners],
            "model_state": self.model.state_dict(),
        }
        cache.write_json("meta.json", meta)  # written last: marks the cache complete
        self.log(f"data: prepared {kept} records ({meta['counts']}), dropped {drops.total} "
                 f"in {meta['seconds']} s")
        return Prepared(cache, fp, self._open(cache, meta), meta, False)

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
        return {s: ArrowTable([str(cache.path(f)) for f in meta["example_files"][s]]) for s in SPLITS}


class _Reiterable:
    """Wraps a generator factory so fit() can iterate the data more than once."""

    def __init__(self, factory: Callable[[], Iterable[Record]]) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[Record]:
        return iter(self._factory())
