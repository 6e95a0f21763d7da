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
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs

from ..components import BadRecord, Cleaner, Model, Record, Source
from ..config import DataConfig
from ..errors import DataError, DropRecord
from ..storage import Storage
from .arrow import ArrowShardWriter, ArrowTable
from .records import RecordStream, table_runs
from .checks import FLOAT32_MAX, non_finite  # noqa: F401 - re-exported
from .example_jobs import FitJob, GroupJob, example_jobs, makes_groups
from .parallel import (InlineRunner, PassSpec, ProcessRunner, digests_of, fits_by_parts,
                       parallel_prefix, report_sum, shard_bytes)
from .shard_tables import SPLITS, FitPart, RecordFile, clean_chain, fit_part, read_shard_table
from .ranks import RankLink, RankRunner, local_runner
from ..monitor.progress import PrepProgress
from .versions import code_version

_FIELD_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CACHE_VERSION = 2
#: Records cleaned together (Cleaner.clean_batch): large enough that a cleaner's batch
#: work pays, small enough that memory stays flat.
CLEAN_BATCH = 512


def file_fingerprint(path: str, *, full_hash_below: int = 1 << 20) -> dict[str, Any]:
    """Size and mtime of a file, plus a content hash when it is small (cheap on big data).
    An ``s3://`` object: its size and ETag, which the store computes (nothing is read)."""
    if str(path).startswith("s3:/"):
        from ..objectstore import info

        size, etag = info(str(path))
        return {"path": str(path), "size": size, "etag": etag}
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
                 log: Callable[[str], None] = lambda m: None, progress: str = "none",
                 ranks: RankLink | None = None) -> None:
        self.data = data
        self.source = source
        self.cleaners = cleaners
        self.model = model
        self.seed = seed
        self.fingerprint_extra = fingerprint_extra
        self.log = log
        #: the cache's cipher (set by :meth:`prepare` from the storage module), or None
        self.cipher: Any = None
        self.progress_mode = progress
        self.progress: Any = PrepProgress("none")
        #: where shards are read and cleaned (worker processes while :meth:`prepare` runs)
        self._runner: InlineRunner | ProcessRunner | RankRunner = InlineRunner(source, cleaners)
        self.prefix = parallel_prefix(cleaners)
        self.workers = 1
        #: report deltas of the cleaners run by the runner, summed over the last pass
        self.pass_reports: list[Any] = []
        self._code: list[dict[str, Any]] | None = None
        #: under torchrun, the other ranks clean their share of the shards (see ranks.py)
        self.ranks = ranks
        #: the folder of parsed shard tables while the passes read the source (see _spill_in)
        self._spill: str | None = None
        #: the spill's removal after the writing pass (a thread)
        self._removal = _Removal(None, None)

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
        """Each data component's code version: a plugin's new code is a new cache.

        Computed once per preparer: hashing an editable install's files takes a second.
        """
        if self._code is None:
            self._code = [code_version(type(c)) for c in (self.source, *self.cleaners, self.model)]
        return self._code

    # -- streaming passes -------------------------------------------------------------------------

    def _start_runner(self) -> None:
        """Worker processes for this preparation (data.prepare_workers), or this process;
        under torchrun, the other ranks too (each takes shard ``i`` with ``i % world == rank``)."""
        shards = self.source.shards()
        self.prefix = parallel_prefix(self.cleaners)
        link = self.ranks if self.ranks is not None and self.ranks.ok else None
        world = link.world_size if link is not None else 1
        mine = [s for i, s in enumerate(shards) if i % world == 0]
        local = local_runner(self.source, self.cleaners, self.prefix, self.data.prepare_workers,
                             mine, self.log, self.model)
        self._runner = RankRunner(link, local) if link is not None else local
        self.workers = self._runner.workers

    def _spec(self, upto: int, digest: bool, columnar: bool = False, fit: bool = False) -> PassSpec:
        """A pass through the first ``upto`` cleaners (and the digests of the next when
        ``digest``), with the fitted state workers need."""
        split = self.data.split
        states = {}
        if not isinstance(self._runner, InlineRunner):  # workers or ranks start from the pickled state
            states = {j: c.state_dict() for j, c in enumerate(self.cleaners[:upto + digest])
                      if c.needs_fit}
        size = max(1, min(CLEAN_BATCH, self.data.shard_rows))  # at most one shard in memory
        return PassSpec(upto, states, split.field if split.method == "field" else None,
                        _FIELD_SPLITS, size, digest, columnar, fit, self._spill)

    def _part(self, ordinal: int, ordered_count: int) -> str:
        split = self.data.split
        if split.method == "random":
            return split_of(ordinal - 1, self.seed, split.val, split.test)
        frac = (ordinal - 1) / max(1, ordered_count)
        return ("train" if frac < 1 - split.val - split.test
                else "val" if frac < 1 - split.test else "test")

    def _count(self) -> int:
        total = 0
        for shard in self.source.shards():
            table = read_shard_table(self.source, shard, self._spill)
            total += table.num_rows if table is not None else sum(
                1 for item in self.source.read(shard) if not isinstance(item, (BadRecord, DropRecord)))
        return total

    def _place_item(self, item: tuple[Any, ...], name: str, deferred: _Deferred | None, only: str | None,
                    pos: list[int], write: Storage | None) -> tuple[list[tuple[Any, ...]], int, int]:
        """One item of a worker's chunk in the whole stream: its events, the source rows
        it stands for, and its weight toward a flush (rows held in memory)."""
        tag = item[0]
        if tag == "part":  # ("part", fit part or None, rows): a shard's training rows, fitted
            pos[0] += item[2]
            return ([("part", item[1])] if item[1] is not None else []), item[2], 1
        if tag == "file":  # ("file", split, name, rows): rows the worker wrote into the cache
            pos[0] += item[3]
            if only not in (None, item[1]) or write is None:
                return [], item[3], 0
            return [("file", item[1], RecordFile(str(write.path(item[2])), item[3]))], item[3], 1
        if tag == "tab":
            tables = self._place_table(item, only, pos)
            return tables, item[1].num_rows, sum(t[2].num_rows for t in tables)
        event = self._place(item, name, deferred, only, pos)
        return ([event], 1, 1) if event is not None else ([], 1, 0)

    def _place_table(self, item: tuple[Any, ...], only: str | None, pos: list[int]) -> list[tuple[Any, ...]]:
        """A worker's cleaned table in the whole stream: ``("table", split, rows)`` events,
        one per split it holds (the record path's ordinals and splits, row for row)."""
        import numpy as np
        import pyarrow as pa

        _tag, table, splits = item
        start, n = pos[0], table.num_rows
        pos[0] += n
        if splits is None:
            splits = np.array([SPLITS.index(self._part(start + i + 1, pos[1])) for i in range(n)], np.int8)
        events = []
        for part in SPLITS if only is None else (only,):
            mask = splits == SPLITS.index(part)
            if mask.all():
                events.append(("table", part, table))
            elif mask.any():
                events.append(("table", part, table.filter(pa.array(mask))))
        return events

    def _bad(self, drops: DropCounter | _Deferred | None, reason: str, where: str, detail: str = "",
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

    def _place(self, item: tuple[Any, ...], name: str, deferred: _Deferred | None,
               only: str | None, pos: list[int]) -> tuple[Any, ...] | None:
        """One item of a shard's stream in the whole stream: its ordinal, split and location.

        ``pos`` is ``[ordinal so far, record count of an ordered split]``. Returns the
        ``("record", split, where, outcome)`` event, or None (dropped, or another split).
        A source that does not name lines gets ``NAME record N`` (N: the ordinal).
        """
        tag = item[0]
        if tag == "drop":
            _tag, reason, where, detail, bad = item
            self._bad(deferred, reason, where or f"{name} record {pos[0] + 1}", detail, bad=bad)
            return None
        pos[0] += 1
        if tag == "skip":
            _tag, reason, where, detail = item
            self._bad(deferred, reason, where or f"{name} record {pos[0]}", detail)
            return None
        _tag, where, path, part, outcome, digest = item
        part = part or self._part(pos[0], pos[1])
        if only is not None and part != only:
            return None
        return ("record", part, path or where or f"{name} record {pos[0]}", outcome, digest)

    def _flush(self, events: list[tuple[Any, ...]], suffix: list[Cleaner],
               drops: DropCounter | None, digest: bool = False) -> Iterator[tuple[str, Record]]:
        """Run the in-order cleaners over the batch, report drops and yield records in order.
        ``digest``: the records came with the first of ``suffix``'s digests."""
        todo = [e for e in events if e[0] == "record" and isinstance(e[3], dict)]
        outcomes = iter(clean_chain(suffix, [e[3] for e in todo],
                                    [e[4] for e in todo] if digest else None))
        batch, events[:] = list(events), []
        for event in batch:
            if event[0] == "drop":  # dropped by the source while the batch filled
                if drops is not None:
                    drops.add(event[1], event[2], bad=event[3])
                continue
            if event[0] == "table":  # a shard cleaned the columnar way
                yield event[1], event[2]
                continue
            if event[0] == "part":  # a worker's fit part of a shard's training rows
                yield "train", FitPart(event[1])
                continue
            if event[0] == "file":  # rows a worker wrote into the cache
                yield event[1], event[2]
                continue
            _tag, part, where, value, _digest = event
            out = next(outcomes) if isinstance(value, dict) else value
            if isinstance(out, tuple) and out[0] == "D":  # a worker's DropRecord
                out = DropRecord(out[1], out[2], bad=out[3])
            elif isinstance(out, tuple):  # ("F", name): a worker's cleaner filtered it
                out = out[1]
            if isinstance(out, DropRecord):
                self._bad(drops, out.reason, where, out.detail, bad=out.bad)
            elif isinstance(out, str):
                self._bad(drops, f"filtered_by_{out}", where, bad=False)
            else:
                yield part, out

    def _cleaned(self, upto: int, only: str | None, drops: DropCounter | None,
                 total: list[int], on_start: Callable[[], None] = lambda: None,
                 fit: bool = False, write: Storage | None = None) -> Iterator[tuple[str, Any]]:
        """Cleaned ``(split, record)`` of one pass through ``cleaners[:upto]``, in source order;
        a shard that went the columnar way comes as ``(split, pyarrow Table)`` of its rows,
        or, with ``fit`` (a pass that fits ``cleaners[upto]`` by parts), as
        ``("train", FitPart)`` when its split is known per row; with ``write`` (the records
        folder), as ``(split, RecordFile)`` of the rows written there where it was cleaned.

        The source's shards are read and cleaned by the leading per-record cleaners in the
        runner (worker processes, or here); the rest run here over batches of about
        CLEAN_BATCH records. Drops are counted in source order, as if each record went
        through the cleaners alone, and an error is raised after the records before it.
        """
        k = min(upto, self.prefix)
        suffix = self.cleaners[k:upto]
        for cleaner in suffix:
            cleaner.start_pass()
        on_start()
        spec = self._spec(k, k < upto and digests_of(self.cleaners[k])
                          and not isinstance(self._runner, InlineRunner), columnar=k == upto,
                          fit=fit and k == upto)
        if write is not None and k == upto and not isinstance(self._runner, RankRunner):
            spec.write = (str(write.makedirs()), write.cipher, self._record_order())  # other ranks have other disks
        shards = self.source.shards()
        self.pass_reports = [{} for _ in range(k)]
        events: list[tuple[Any, ...]] = []
        deferred = _Deferred(events) if drops is not None else None
        pos = [0, self._count() if self.data.split.method == "ordered" else 0]
        pending = 0
        try:
            for index, kind, payload in self._runner.run(shards, spec):
                if kind == "end":
                    self.pass_reports = [report_sum(a, b) for a, b in zip(self.pass_reports, payload)]
                    self.progress.advance(0, shard_bytes(shards[index]))
                    continue
                name = Path(shards[index].path).name
                rows = 0
                for item in payload:
                    got, n, weight = self._place_item(item, name, deferred, only, pos, write)
                    events.extend(got)
                    rows += n
                    pending += weight
                total[0] += rows
                self.progress.advance(rows, 0)
                if pending >= spec.size:
                    pending = 0
                    yield from self._flush(events, suffix, drops, spec.digest)
        except DataError:
            yield from self._flush(events, suffix, drops, spec.digest)  # errors of earlier records first
            raise
        yield from self._flush(events, suffix, drops, spec.digest)

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
            meta = self._build_with_workers(work, fp, files)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            work.sync_folders()  # the shards' entries, renamed without a folder fsync each
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

    def _build_with_workers(self, cache: Storage, fp: str, files: Any) -> dict[str, Any]:
        """:meth:`_build` with the worker processes and the progress display around it."""
        self._start_runner()
        self.progress = PrepProgress(self.progress_mode, total_bytes=sum(
            shard_bytes(s) for s in self.source.shards()))
        runner = self._runner
        try:
            meta = self._build(cache, fp, files)
        finally:
            self._removal.wait()  # before anything removes the folder it works in
            runner.close()
            self._runner = InlineRunner(self.source, self.cleaners)
            self.progress.close()
        meta["workers"] = self.workers
        if isinstance(runner, RankRunner):  # shards each rank cleaned in the writing pass
            meta["ranks"] = runner.shards_by_rank
        return meta

    def _spill_in(self, cache: Storage) -> str | None:
        """Where the passes keep the source's parsed shard tables, so that the source is
        parsed once, not once per pass: ``spill/`` in the cache being made, removed after
        the last pass. Only with more than one pass, a source that reads tables, and
        this machine's processes (ranks elsewhere have their own disks); never for an
        encrypted cache, which keeps no plaintext copy of the data."""
        if (not any(c.needs_fit for c in self.cleaners) or isinstance(self._runner, RankRunner)
                or type(self.source).read_table is Source.read_table or cache.cipher is not None):
            return None
        return str(cache.makedirs("spill"))

    def _fit_cleaners(self) -> None:
        """Fit cleaners in order, each on train records passed through the earlier ones."""
        for i, cleaner in enumerate(self.cleaners):
            if cleaner.needs_fit:
                self.log(f"data: fitting cleaner {cleaner.name}")
                self.progress.phase(f"fit {cleaner.name}")
                if fits_by_parts(cleaner):
                    cleaner.fit_merge(self._fit_parts(i))
                    continue
                cleaner.fit(RecordStream(lambda i=i: (r for _p, r in self._cleaned(i, "train", None, [0]))))

    def _fit_parts(self, i: int) -> Iterator[Any]:
        """``cleaners[i]``'s ``fit_table`` parts of the training split, in source order: made
        where the shard was cleaned when its split is known per row, else here (one per
        table of the stream, as :func:`privet.record_tables` cuts it)."""
        cleaner = self.cleaners[i]
        items = (item for _p, item in self._cleaned(i, "train", None, [0], fit=True))
        for item in table_runs(items):
            part = item.part if isinstance(item, FitPart) else fit_part(cleaner, item)
            if part is not None:
                yield part

    def _build(self, cache: Storage, fp: str, files: Any) -> dict[str, Any]:
        """Every pass of the preparation, written into ``cache``; returns its meta."""
        clock = [time.perf_counter()]
        timings: dict[str, float] = {}

        def lap(name: str) -> None:  # seconds of each phase, in meta.json
            now = time.perf_counter()
            timings[name] = round(now - clock[0], 3)
            clock[0] = now

        self._spill = self._spill_in(cache)
        self._fit_cleaners()
        lap("fit_cleaners_s")
        drops = DropCounter()
        total = [0]
        counters: list[Any] = []
        writers = self._write_records(cache, drops, total, counters)
        record_files = {s: w.close() for s, w in writers.items()}
        self._removal = self._remove_spill(cache)
        lap("clean_and_write_s")
        self._check_bad_fraction(drops, total[0])
        if writers["train"].rows == 0:
            raise DataError(f"no training records left after cleaning ({total[0]} read, "
                            f"{drops.total} dropped: {dict(drops.counts)}); check the source and "
                            f"cleaner options")
        records = {s: ArrowTable(fs, cipher=cache.cipher) for s, fs in record_files.items()}
        self.progress.phase(f"fit {self.model.name}")
        self._fit_model(records["train"])
        lap("model_fit_s")
        example_files = dict(record_files)
        if type(self.model).examples is not Model.examples:
            self.progress.phase("examples")
            example_files = self._write_examples(cache, records)
        lap("examples_s")
        self._removal.join()
        # counts of the writing pass alone: fitting passes ran the earlier cleaners too
        reports = {f"{i}:{c.name}": self.pass_reports[i] if i < len(self.pass_reports)
                   else counts_since(c.report(), before)
                   for i, (c, before) in enumerate(zip(self.cleaners, counters))}
        return {
            "fingerprint": fp,
            "files": files,
            "code": self.code_versions(),
            "created": time.time(),
            "timings": timings,
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

    def _remove_spill(self, cache: Storage) -> "_Removal":
        """Remove the parsed shards after the writing pass, in a thread: a gigabyte of files
        takes a second to unlink, which the model's passes need not wait for."""
        removal = _Removal(cache, "spill" if self._spill is not None else None)
        self._spill = None
        return removal

    def _write_records(self, cache: Storage, drops: DropCounter, total: list[int],
                       counters: list[Any]) -> dict[str, ArrowShardWriter]:
        """The writing pass: every cleaned record into ``records/`` of ``cache`` (the
        workers write their columnar shards' files themselves); ``counters`` gets the
        cleaners' reports as the pass starts."""
        order = self._record_order()
        writers = {s: ArrowShardWriter(cache.sub("records"), s, self.data.shard_rows, order=order)
                   for s in SPLITS}
        snapshot = lambda: counters.extend(copy.deepcopy(c.report()) for c in self.cleaners)  # noqa: E731
        self.progress.phase("prepare")
        for part, item in self._cleaned(len(self.cleaners), None, drops, total, snapshot,
                                        write=cache.sub("records")):
            if isinstance(item, dict):
                writers[part].add(item)
            elif isinstance(item, RecordFile):
                writers[part].add_file(item.path, item.rows)
            else:
                writers[part].add_table(item)
        return writers

    def _record_order(self) -> Any:
        """The model's ``record_order`` when it makes its own examples and defines one."""
        model = self.model
        if type(model).examples is Model.examples or type(model).record_order is Model.record_order:
            return None
        return model.record_order

    def _fit_model(self, train: ArrowTable) -> None:
        """``model.fit`` on the cached training records, or by parts: one per training
        file, made in the workers (``Model.fit_table``)."""
        if fits_by_parts(self.model):
            jobs = [FitJob(f, train.cipher) for f in train.files]
            self.model.fit_merge(p for p in self._runner.model_jobs(jobs, None) if p is not None)
        else:
            self.model.fit(RecordStream(train._open))

    def _write_examples(self, cache: Storage, records: dict[str, ArrowTable]) -> dict[str, list[str]]:
        """The examples of every split: made in the workers, a few thousand records at a
        time, for a model whose examples are per record, or a group at a time for a model
        that cuts them into groups; else one streaming pass per split here."""
        examples = cache.sub("examples")
        writers = {s: ArrowShardWriter(examples, s, self.data.shard_rows) for s in SPLITS}
        if not self.model.per_record_examples:
            grouped = self._group_jobs(examples, records)
            for s in SPLITS:
                if s in grouped:
                    continue
                stream = RecordStream(records[s]._open)
                if type(self.model).example_tables is not Model.example_tables:
                    for table in self.model.example_tables(stream, s):
                        writers[s].add_table(table)
                    continue
                for ex in self.model.examples(stream, s):
                    writers[s].add(ex)
            self._write_groups(grouped, writers)
            return {s: w.close() for s, w in writers.items()}
        import pyarrow as pa

        jobs = [job for s in SPLITS for job in example_jobs(s, records[s])]
        state = None if isinstance(self._runner, InlineRunner) else self.model.state_dict()
        for job, data in zip(jobs, self._runner.model_jobs(jobs, state)):
            if data is not None:
                writers[job[0]].add_table(pa.ipc.open_file(pa.BufferReader(data)).read_all())
        return {s: w.close() for s, w in writers.items()}

    def _group_jobs(self, examples: Storage, records: dict[str, ArrowTable]) -> dict[str, list[GroupJob]]:
        """The jobs of each split whose examples the model cuts into groups, in split order."""
        if not makes_groups(self.model):
            return {}
        out: dict[str, list[GroupJob]] = {}
        for s in SPLITS:
            groups = self.model.example_groups(RecordStream(records[s]._open), s)
            if groups is not None:
                folder = str(examples.makedirs())
                out[s] = [GroupJob(s, records[s].files, records[s].cipher, g, folder, f"{s}-g{i:04d}",
                                   self.data.shard_rows) for i, g in enumerate(groups)]
        return out

    def _write_groups(self, grouped: dict[str, list[GroupJob]], writers: dict[str, ArrowShardWriter]) -> None:
        """Take the groups' example files in job order (written by the workers), and hand
        each split its group reports, in split order, once its last group is in."""
        jobs = [job for split_jobs in grouped.values() for job in split_jobs]
        splits = list(grouped)
        left = {s: len(split_jobs) for s, split_jobs in grouped.items()}
        reports: dict[str, list[Any]] = {s: [] for s in splits}

        def finish_done() -> None:
            while splits and not left[splits[0]]:
                split = splits.pop(0)
                self.model.merge_group_reports(split, reports[split])

        finish_done()
        if not jobs:
            return
        state = None if isinstance(self._runner, InlineRunner) else self.model.state_dict()
        for job, (files, report) in zip(jobs, self._runner.model_jobs(jobs, state)):
            for path, rows in files:
                writers[job.split].add_file(path, rows)
            reports[job.split].append(report)
            left[job.split] -= 1
            finish_done()

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


class _Removal:
    """A folder of ``storage`` removed in a thread; :meth:`join` waits and raises its error."""

    def __init__(self, storage: Storage | None, rel: str | None) -> None:
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if rel is not None:
            self._thread = threading.Thread(target=self._run, args=(storage, rel), daemon=True,
                                            name="privet-remove-spill")
            self._thread.start()

    def _run(self, storage: Storage, rel: str) -> None:
        try:
            storage.remove(rel)
        except BaseException as err:  # noqa: BLE001 - handed to join()
            self.error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def join(self) -> None:
        self.wait()
        if self.error is not None:
            raise self.error


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
