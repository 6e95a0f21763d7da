"""Parallel preparation: source shards read and cleaned in worker processes, merged in order.

The unit of work is a source shard (a file, or a byte range of a big one). A worker reads
its shard, applies the per-record checks and the leading *per-record* cleaners (those whose
result for a record depends on that record alone) and streams the outcomes back in chunks.
The preparing process takes the shards strictly in source order, so everything that needs
the whole stream (the record ordinal the random split hashes, cleaners that compare records
with each other, the Arrow writers) sees exactly what a one-process preparation sees: the
cache is byte-identical whatever the number of workers.

A free worker takes the next shard (a shared counter: a slow shard or a busy core holds
up one worker, not every ``workers``-th shard) and says so on a claims queue, which is
how the preparing process knows whose queue to read each shard from. Each worker has its
own bounded queue, so at most ``workers * QUEUE_CHUNKS`` chunks wait in memory, however
big the corpus. Workers are
started with ``spawn`` (torch and fork do not mix) and get the source and cleaners
pickled; classes of plugin-dir modules are re-imported from their files.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pickle
import queue
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..components import BadRecord, Cleaner, Model, Record, Shard, Source
from ..errors import DropRecord, PluginError, PrivetError
from .checks import non_finite
from .example_jobs import forget_last_table, run_job
from .shard_tables import Item, clean_chain, portable, shard_table

#: Chunks a worker may have waiting before it blocks: bounds memory (about 16k records a
#: worker), and lets a worker finish a whole shard of up to ~8 MB of text while the
#: preparing process still reads the one before it (shards are taken in order: with a
#: shallow queue the workers would take turns instead of running side by side).
QUEUE_CHUNKS = 32
#: With ``data.prepare_workers`` unset, data smaller than this is prepared in-process:
#: starting worker processes (a second each) costs more than it saves.
PARALLEL_MIN_BYTES = 8 << 20
_POLL_S = 1.0


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and Slurm set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def runs_per_record(cleaner: Cleaner) -> bool:
    """Whether ``cleaner`` may run in worker processes (see ``Cleaner.per_record``)."""
    cls = type(cleaner)
    declared = any("per_record" in vars(k) for k in cls.__mro__ if k is not Cleaner)
    if declared:
        return bool(cls.per_record)
    return cls.start_pass is Cleaner.start_pass  # a start_pass resets cross-record state


def parallel_prefix(cleaners: Sequence[Cleaner]) -> int:
    """How many leading cleaners run in the workers: up to the first that is not per-record."""
    for i, cleaner in enumerate(cleaners):
        if not runs_per_record(cleaner):
            return i
    return len(cleaners)


def digests_of(cleaner: Cleaner) -> bool:
    """Whether ``cleaner`` computes per-record digests ahead (``Cleaner.digest_batch``)."""
    return type(cleaner).digest_batch is not Cleaner.digest_batch


def fits_by_parts(component: Cleaner | Model) -> bool:
    """Whether a cleaner or a model fits by map and merge (``fit_table`` and ``fit_merge``)."""
    base = Cleaner if isinstance(component, Cleaner) else Model
    return type(component).fit_table is not base.fit_table


def shard_bytes(shard: Shard) -> int:
    """Bytes of source data a shard covers (for MB/s): its byte range, else its file."""
    if shard.end is not None and Path(shard.path).is_file():
        return max(0, shard.end - shard.start)
    try:
        return os.stat(shard.path).st_size if Path(shard.path).is_file() else 0
    except OSError:
        return 0


# -- one shard: what a worker does ------------------------------------------------------------

def _located(source: Source, shard: Shard) -> Iterator[tuple[str | None, Any]]:
    read_located = getattr(source, "read_located", None)
    if callable(read_located):
        yield from read_located(shard)
    else:
        for item in source.read(shard):
            yield None, item


def _item(location: str | None, item: Any, name: str, split_field: str | None,
          parts: dict[str, str]) -> Item | Record:
    """The stream item for one thing a source yielded, or the record to clean."""
    if isinstance(item, BadRecord):
        return ("drop", item.reason, item.location or location or name, item.detail, True)
    if isinstance(item, DropRecord):
        return ("drop", item.reason, location, item.detail, item.bad)
    problem = non_finite(item) if isinstance(item, dict) else None
    if problem is not None:
        return ("skip", "non_finite_value", location, problem)
    if split_field is not None:
        value = item.get(split_field) if isinstance(item, dict) else None
        if value is None or str(value).lower() not in parts:
            return ("skip", "bad_split_value", location,
                    f"{split_field}={value!r}; expected train/val/test")
    return item


def shard_chunks(source: Source, shard: Shard, cleaners: Sequence[Cleaner], spec: "PassSpec",
                 digester: Cleaner | None = None, fitter: Cleaner | None = None) -> Iterator[list[Item]]:
    """The outcome stream of one shard, ``spec.size`` records at a time, in source order.

    ``digester``: the next cleaner, whose digests of the cleaned records go with them.
    With ``spec.columnar`` the table path is tried first (:func:`shard_table`); ``fitter``:
    the next cleaner, whose ``fit_table`` part of the shard's training rows goes instead
    of them. A source error is raised after the chunk holding the records read before it.
    """
    split_field, parts, size = spec.split_field, spec.parts, spec.size
    if spec.columnar and digester is None:
        done = yield from shard_table(source, shard, cleaners, spec, fitter)
        if done:
            return
    name = Path(shard.path).name
    pending: list[Any] = []
    records: list[Record] = []

    def flush() -> list[Item]:
        cleaned = clean_chain(cleaners, records)
        digests = _digests(digester, cleaned)
        outcomes = iter(zip(cleaned, digests))
        out = [("rec", *p, *portable(*next(outcomes))) if isinstance(p, list) else p for p in pending]
        pending.clear()
        records.clear()
        return out

    try:
        for location, item in _located(source, shard):
            got = _item(location, item, name, split_field, parts)
            if isinstance(got, tuple):
                pending.append(got)
                continue
            path = got.get("path")
            part = parts[str(got[split_field]).lower()] if split_field is not None else None
            pending.append([location, path if isinstance(path, str) and path else None, part])
            records.append(got)
            if len(records) >= size:
                yield flush()
    except BaseException:
        if pending:
            yield flush()
        raise
    if pending:
        yield flush()


def _digests(digester: Cleaner | None, cleaned: list[Any]) -> list[Any]:
    """The digest of each cleaned record (``None`` for the dropped, or without a digester)."""
    if digester is None:
        return [None] * len(cleaned)
    kept = [i for i, out in enumerate(cleaned) if isinstance(out, dict)]
    got = digester.digest_batch([cleaned[i] for i in kept]) if kept else []
    if got is None or len(got) != len(kept):
        raise PluginError(f"cleaner {digester.name}: digest_batch returned "
                          f"{'None' if got is None else len(got)} digests for {len(kept)} records; "
                          f"return one per record")
    out: list[Any] = [None] * len(cleaned)
    for i, digest in zip(kept, got):
        out[i] = digest
    return out


def report_delta(after: Any, before: Any) -> Any:
    """``after - before`` for the numbers of a cleaner's report (nested dicts too)."""
    if isinstance(after, dict):
        prior = before if isinstance(before, dict) else {}
        return {k: report_delta(v, prior.get(k)) for k, v in after.items()}
    numeric = (int, float)
    if isinstance(after, numeric) and isinstance(before, numeric) and not isinstance(after, bool):
        return after - before
    return after


def report_sum(total: Any, delta: Any) -> Any:
    """Add the numbers of ``delta`` to ``total`` (other values: the latest wins)."""
    if isinstance(total, dict) and isinstance(delta, dict):
        out = dict(total)
        for k, v in delta.items():
            out[k] = report_sum(total[k], v) if k in total else v
        return out
    numeric = (int, float)
    if isinstance(total, numeric) and isinstance(delta, numeric) and not isinstance(delta, bool):
        return total + delta
    return delta


def _run_shard(source: Source, shard: Shard, cleaners: Sequence[Cleaner], spec: "PassSpec",
               digester: Cleaner | None = None, fitter: Cleaner | None = None
               ) -> Iterator[tuple[str, Any]]:
    """``("chunk", items)`` messages, then ``("end", report deltas of the cleaners)``."""
    before = [copy.deepcopy(c.report()) for c in cleaners]
    for chunk in shard_chunks(source, shard, cleaners, spec, digester, fitter):
        yield "chunk", chunk
    yield "end", [report_delta(c.report(), b) for c, b in zip(cleaners, before)]


# -- running the shards of one pass ------------------------------------------------------------

class PassSpec:
    """What one streaming pass asks of the workers."""

    def __init__(self, upto: int, states: dict[int, Any], split_field: str | None,
                 parts: dict[str, str], size: int, digest: bool = False,
                 columnar: bool = False, fit: bool = False, spill: str | None = None,
                 write: tuple[str, Any, Any] | None = None) -> None:
        self.upto = upto
        self.states = states
        self.split_field = split_field
        self.parts = parts
        self.size = size
        #: also compute the digests of cleaner ``upto`` (Cleaner.digest_batch)
        self.digest = digest
        #: try each shard as one Arrow table first (Source.read_table, Cleaner.clean_table)
        self.columnar = columnar
        #: send cleaner ``upto``'s fit_table part of a columnar shard instead of its rows
        self.fit = fit
        #: the folder where shards' parsed tables are kept between passes (read_shard_table)
        self.spill = spill
        #: (records folder, cipher, the model's record_order or None): write a columnar
        #: shard's rows there (write_split_files)
        self.write = write

    def fitter(self, cleaners: Sequence[Cleaner]) -> Cleaner | None:
        return cleaners[self.upto] if self.fit and self.upto < len(cleaners) else None


class InlineRunner:
    """Runs the shards in this process, with the preparer's own cleaners (one worker)."""

    workers = 1

    def __init__(self, source: Source, cleaners: Sequence[Cleaner], model: Model | None = None) -> None:
        self.source = source
        self.cleaners = list(cleaners)
        self.model = model

    def run(self, shards: list[Shard], spec: PassSpec) -> Iterator[tuple[int, str, Any]]:
        cleaners = self.cleaners[:spec.upto]
        for c in cleaners:
            c.start_pass()
        digester = self.cleaners[spec.upto] if spec.digest else None
        for index, shard in enumerate(shards):
            for kind, payload in _run_shard(self.source, shard, cleaners, spec, digester,
                                            spec.fitter(self.cleaners)):
                yield index, kind, payload

    def model_jobs(self, jobs: list[Any], state: Any) -> Iterator[Any]:
        """What each job gives (see :func:`~.example_jobs.run_job`), in order, with this
        process' model (``state`` is for workers)."""
        if self.model is None:
            raise PluginError("this runner was made without the model; it runs no model jobs")
        try:
            for job in jobs:
                yield run_job(self.model, job)
        finally:
            forget_last_table()  # the records' table is not kept past the pass

    def close(self) -> None:
        """Nothing to stop."""


class ProcessRunner:
    """Runs the shards in ``workers`` spawned processes; yields their messages in shard order."""

    def __init__(self, source: Source, cleaners: Sequence[Cleaner], workers: int,
                 model: Model | None = None) -> None:
        import multiprocessing

        parts = [source, *cleaners, *([model] if model is not None else [])]
        _check_importable(parts)
        modules = _file_modules(parts)
        for name, _path in modules:
            _ensure_parents(name)
        payload = pickle.dumps((source, list(cleaners), model))  # raises when a component does not pickle
        ctx = multiprocessing.get_context("spawn")
        self.workers = workers
        self._current = ctx.Value("l", 0)
        self._commands = [ctx.Queue() for _ in range(workers)]
        self._results = [ctx.Queue(maxsize=QUEUE_CHUNKS) for _ in range(workers)]
        self._claims = ctx.Queue()
        counter = (ctx.Lock(), ctx.RawValue("l", 0), ctx.RawValue("l", 0))
        self._counter = counter
        self._procs = [ctx.Process(target=_worker_main, name=f"privet-prepare-{w}", daemon=True,
                                   args=(payload, modules, self._commands[w], self._results[w],
                                         self._current, Claims(*counter, self._claims, w)))
                       for w in range(workers)]
        for p in self._procs:
            p.start()
        self._pass = 0
        #: the worker that took each job of the current pass
        self._owners: dict[int, int] = {}

    def run(self, shards: list[Shard], spec: PassSpec) -> Iterator[tuple[int, str, Any]]:
        pass_id = self._deal(shards, lambda p, items: (p, spec, items))
        yield from self._until_end(pass_id, len(shards))

    def model_jobs(self, jobs: list[Any], state: Any) -> Iterator[Any]:
        """What each job gives (see :func:`~.example_jobs.run_job`), made in the workers on
        their copy of the model, loaded with ``state`` when given (each job by the next
        free worker), yielded in order."""
        pass_id = self._deal(jobs, lambda p, items: ("examples", p, state, items))
        for index in range(len(jobs)):
            yield self._next(pass_id, index)[1]

    def _deal(self, items: Sequence[Any], command: Callable[[int, list[Any]], Any]) -> int:
        """Start a pass: every worker gets ``command(pass id, items)`` and takes items from
        the pass' counter (:class:`Claims`); workers leave what is left of an abandoned pass."""
        self._pass += 1
        pass_id = self._pass
        self._current.value = pass_id
        lock, claim_pass, claim_next = self._counter
        with lock:
            claim_pass.value, claim_next.value = pass_id, 0
        self._owners = {}
        for commands in self._commands:
            commands.put(command(pass_id, list(items)))
        return pass_id

    def _owner(self, pass_id: int, index: int) -> int:
        """The worker that took job ``index`` of pass ``pass_id`` (claims of other passes are
        skipped; they may come out of order, from different workers)."""
        while index not in self._owners:
            try:
                got_pass, got_index, w = self._claims.get(timeout=_POLL_S)
            except queue.Empty:
                self._check_alive()
                continue
            if got_pass == pass_id:
                self._owners[got_index] = w
        return self._owners[index]

    def _check_alive(self) -> None:
        for w, proc in enumerate(self._procs):
            if not proc.is_alive():
                raise PrivetError(f"data preparation worker {w} died (exit code {proc.exitcode}); "
                                  f"out of memory? set data.prepare_workers lower")

    def _until_end(self, pass_id: int, count: int) -> Iterator[tuple[int, str, Any]]:
        """Each job's messages up to its ``"end"``, job by job."""
        for index in range(count):
            while True:
                kind, payload = self._next(pass_id, index)
                yield index, kind, payload
                if kind == "end":
                    break

    def _next(self, pass_id: int, index: int) -> tuple[str, Any]:
        """The next message of job ``index`` of pass ``pass_id`` from its worker (messages
        of an abandoned pass are skipped; a worker's error is raised here)."""
        w = self._owner(pass_id, index)
        while True:
            got_pass, got_index, kind, payload = self._get(w)
            if got_pass != pass_id:
                continue  # a chunk of an abandoned pass
            if got_index != index:
                raise PluginError(f"preparation worker {w} sent job {got_index}, expected {index}")
            if kind == "error":
                raise _rebuild(payload)
            return kind, payload

    def _get(self, w: int) -> tuple[Any, ...]:
        while True:
            try:
                return self._results[w].get(timeout=_POLL_S)
            except queue.Empty:
                if not self._procs[w].is_alive():
                    self._check_alive()

    def close(self) -> None:
        """Stop the workers (they may be blocked on a full queue of an abandoned pass)."""
        for commands in self._commands:
            try:
                commands.put_nowait(None)
            except (OSError, ValueError):
                pass
        for p in self._procs:
            p.join(timeout=0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in (*self._commands, *self._results, self._claims):
            q.cancel_join_thread()
            q.close()


class Claims:
    """A worker's end of the pass' shared counter: each free worker takes the next job and
    puts ``(pass id, job, worker)`` on the claims queue, so jobs go to whoever is free and
    the preparing process still reads each job's messages in order from its taker."""

    def __init__(self, lock: Any, claim_pass: Any, claim_next: Any, claims: Any, worker: int) -> None:
        self.lock, self.claim_pass, self.claim_next = lock, claim_pass, claim_next
        self.claims = claims
        self.worker = worker

    def take(self, pass_id: int, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, item)`` of each job this worker takes, in increasing order, until the
        pass has none left or is no longer the current one."""
        while True:
            with self.lock:
                i = self.claim_next.value
                if self.claim_pass.value != pass_id or i >= len(items):
                    return
                self.claim_next.value = i + 1
                self.claims.put((pass_id, i, self.worker))
            yield i, items[i]


def _check_importable(objects: list[Any]) -> None:
    """Refuse what a spawned worker cannot start from: a main script that is not a file
    (``python - < script``), or classes of a ``python -c`` or REPL session."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file and not Path(main_file).is_file():
        raise pickle.PicklingError(f"the main script {main_file!r} is not a file a worker can load")
    if main_file:
        return
    for obj in objects:
        if any(cls.__module__ == "__main__" for cls in type(obj).__mro__):
            raise pickle.PicklingError(f"{type(obj).__name__} is defined in __main__ without a file")


def _file_modules(objects: list[Any]) -> list[tuple[str, str]]:
    """(module name, file) of the components' classes that were loaded from a file path
    (plugin-dir modules): a spawned worker cannot import them by name."""
    out: list[tuple[str, str]] = []
    for obj in objects:
        for cls in type(obj).__mro__:
            module = sys.modules.get(cls.__module__)
            spec = getattr(module, "__spec__", None)
            origin = getattr(spec, "origin", None)
            if module is None or not origin or not origin.endswith(".py"):
                continue
            if not _findable(cls.__module__.split(".")[0]) and (cls.__module__, origin) not in out:
                out.append((cls.__module__, origin))
    return out


def _findable(top: str) -> bool:
    """Whether a fresh process finds package ``top`` (the import finders, not sys.modules)."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        try:
            if find is not None and find(top, None) is not None:
                return True
        except (ImportError, ValueError, TypeError):
            continue
    return False


def _ensure_parents(name: str) -> None:
    """Empty packages for the parents of a module loaded from a file (``privet_local_plugins``
    for ``privet_local_plugins.NAME``): pickle imports a class' module by its dotted name."""
    import types

    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            package = types.ModuleType(parent)
            package.__path__ = []
            sys.modules[parent] = package


def _load_file_modules(modules: list[tuple[str, str]]) -> None:
    for name, path in modules:
        _ensure_parents(name)
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _worker_main(payload: bytes, modules: list[tuple[str, str]], commands: Any, results: Any,
                 current: Any, claims: Claims) -> None:
    """A worker: wait for a pass, take its jobs one at a time, stream the outcomes back."""
    try:
        _load_file_modules(modules)
        source, cleaners, model = pickle.loads(payload)
    except BaseException as err:  # noqa: BLE001 - answered to every pass, in order
        broken: BaseException | None = err
    else:
        broken = None
    while True:
        command = commands.get()
        if command is None:
            return
        if command[0] == "examples":
            _worker_examples(model, command, results, broken, lambda: current.value, claims)
            continue
        pass_id, spec, items = command
        try:
            if broken is not None:
                raise broken
            for j, state in spec.states.items():
                cleaners[j].load_state_dict(state)
            for c in cleaners[:spec.upto]:
                c.start_pass()
        except BaseException as err:  # noqa: BLE001 - reported to the preparing process
            _fail_next(claims.take(pass_id, items), pass_id, results, err)
            continue
        _worker_pass(source, cleaners, spec, pass_id, claims.take(pass_id, items), results,
                     lambda: current.value)


def _put(results: Any, message: tuple[Any, ...], current: Callable[[], int]) -> bool:
    """Put ``message`` on this worker's bounded queue; False (dropped) once its pass is no
    longer the current one: a full queue of a pass the preparing process left must not
    keep this worker from the jobs of the next."""
    while True:
        if current() != message[0]:
            return False
        try:
            results.put(message, timeout=_POLL_S)
            return True
        except queue.Full:
            continue


def _fail_next(jobs: Iterator[tuple[int, Any]], pass_id: int, results: Any, err: BaseException) -> None:
    """Report ``err`` as the outcome of the next job this worker takes (the preparing
    process raises it when it reaches that job)."""
    for index, _item in jobs:
        results.put((pass_id, index, "error", _export_error(err)))
        return


def _worker_examples(model: Model | None, command: tuple[Any, ...], results: Any,
                     broken: BaseException | None, current: Callable[[], int], claims: Claims) -> None:
    """The model jobs this worker takes (:func:`~.example_jobs.run_job`), on its model
    loaded with the command's state when it holds one."""
    _kind, pass_id, state, items = command
    for index, job in claims.take(pass_id, items):
        try:
            if broken is not None:
                raise broken
            if model is None:
                raise PluginError("this preparation's workers were started without the model")
            if state is not None:
                model.load_state_dict(state)
                state = None
            if current() != pass_id or not _put(results, (pass_id, index, "examples", run_job(model, job)), current):
                return  # the preparing process stopped (an error in an earlier job)
        except BaseException as err:  # noqa: BLE001 - reported in order, raised there
            results.put((pass_id, index, "error", _export_error(err)))
            break
    forget_last_table()


def _worker_pass(source: Source, cleaners: list[Cleaner], spec: PassSpec, pass_id: int,
                 jobs: Iterator[tuple[int, Shard]], results: Any, current: Callable[[], int]) -> None:
    digester = cleaners[spec.upto] if spec.digest and spec.upto < len(cleaners) else None
    for index, shard in jobs:
        try:
            for kind, payload in _run_shard(source, shard, cleaners[:spec.upto], spec, digester,
                                            spec.fitter(cleaners)):
                if not _put(results, (pass_id, index, kind, payload), current):
                    return  # the preparing process moved on (an error, or a fit that stopped early)
        except BaseException as err:  # noqa: BLE001 - reported in order, raised there
            results.put((pass_id, index, "error", _export_error(err)))
            return


def _export_error(err: BaseException) -> Any:
    text = "".join(traceback.format_exception(err))
    try:
        blob = pickle.dumps(err)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - an exception class that does not round-trip
        blob = None
    return (blob, type(err).__name__, str(err), text)


def _rebuild(payload: Any) -> BaseException:
    blob, name, message, text = payload
    err: BaseException | None = None
    if blob is not None:
        try:
            err = pickle.loads(blob)
        except Exception:  # noqa: BLE001
            err = None
    if err is None:
        err = PluginError(f"data preparation worker: {name}: {message}")
    if not isinstance(err, PrivetError) and hasattr(err, "add_note"):
        err.add_note(f"in a data preparation worker:\n{text}")
    return err
