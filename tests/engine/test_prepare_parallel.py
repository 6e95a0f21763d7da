"""Parallel preparation (data.prepare_workers): the same cache as one process, byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest

import privet
from privet.builtins.sources import JsonLines
from privet.config import ComponentSpec, DataConfig
from privet.data.arrow import ArrowTable
from privet.data.parallel import parallel_prefix
from privet.data.prepare import Preparer
from privet.monitor.progress import PrepProgress


def _note_pid(what: str) -> None:
    """Where a stage ran: appended to $PRIVET_TEST_PIDS (spawned workers inherit it)."""
    log = os.environ.get("PRIVET_TEST_PIDS")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{what} {os.getpid()}\n")


def _pids(log: Path, what: str) -> set[int]:
    return {int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(what)}


class _Plain(privet.Model):
    """Examples per record from the fitted state: made in the workers after fit."""

    name = "test.plain"
    per_record_examples = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.longest = 0

    def fit(self, records):
        self.longest = max(len(r["text"]) for r in records)

    def state_dict(self):
        return {"longest": self.longest}

    def load_state_dict(self, state):
        self.longest = state["longest"]

    def examples(self, records, split):
        _note_pid("examples")
        for record in records:
            yield {**record, "pad": self.longest - len(record["text"]), "part": split}

    def build(self):
        raise NotImplementedError

    def encode(self, record):
        raise NotImplementedError

    def step(self, module, batch):
        raise NotImplementedError


class _Centre(privet.Cleaner):
    """Fitted per-record cleaner: subtracts the training mean of ``x`` (state travels to workers)."""

    name = "test.centre"
    needs_fit = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.mean = 0.0

    def fit(self, records):
        xs = [r["x"] for r in records]
        self.mean = sum(xs) / len(xs)

    def state_dict(self):
        return {"mean": self.mean}

    def load_state_dict(self, state):
        self.mean = state["mean"]

    def clean(self, record):
        return {**record, "x": record["x"] - self.mean}


class _Screen(privet.Cleaner):
    """Per-record: filters some records, drops others as bad, counts what it saw."""

    name = "test.screen"

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.seen = Counter()

    def clean(self, record):
        self.seen[record["label"]] += 1
        if record["n"] % 11 == 0:
            return None
        if record["n"] % 17 == 0:
            raise privet.DropRecord("too_odd", f"n={record['n']}")
        return record

    def report(self):
        return {"by_label": dict(self.seen)}


class _FirstSeen(privet.Cleaner):
    """Cross-record: the first copy of a text wins (runs in one process, in source order).
    Its per-record part (a hash of the text) is a digest, computed in the workers."""

    name = "test.first_seen"

    def start_pass(self) -> None:
        self.texts: set[str] = set()
        self.digested_here = 0

    def digest_batch(self, records):
        _note_pid("digest")
        return [hashlib.sha256(r["text"].encode()).hexdigest() for r in records]

    def clean(self, record):
        return self.clean_batch([record])[0]

    def clean_batch(self, records, digests=None):
        if digests is None:
            digests = self.digest_batch(records)
            self.digested_here += len(records)
        out = []
        for record, digest in zip(records, digests):
            out.append(None if digest in self.texts else record)
            self.texts.add(digest)
        return out


class _Shout(privet.Cleaner):
    """Per-record, but after the cross-record cleaner: it runs in order too."""

    name = "test.shout"

    def clean(self, record):
        return {**record, "text": record["text"].upper()}


def _corpus(folder: Path, files: int = 5, lines: int = 60) -> Path:
    """JSONL files with duplicates across files, malformed lines and non-finite numbers."""
    folder.mkdir()
    n = 0
    for f in range(files):
        out = []
        for i in range(lines):
            n += 1
            if n % 23 == 0:
                out.append("{not json")
                continue
            x = math.nan if n % 29 == 0 else float(n % 7)
            out.append(json.dumps({"n": n, "text": f"doc {n % 200}", "x": x, "label": n % 3}))
        (folder / f"part-{f}.jsonl").write_text("\n".join(out) + "\n")
    return folder


def _prepare(data: Path, cache: Path, workers: int, cleaners=None, **extra):
    source = JsonLines(JsonLines.Options(paths=[data]))
    cleaners = cleaners if cleaners is not None else [_Centre(), _Screen(), _FirstSeen(), _Shout()]
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=workers,
                        max_bad_fraction=0.5, shard_rows=30, **extra)
    logs: list[str] = []
    preparer = Preparer(config, source, cleaners, _Plain(), seed=3, fingerprint_extra={},
                        log=logs.append)
    return preparer.prepare(cache), logs


def _files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes()
            for p in sorted(cache.rglob("*.arrow"))}


_VARYING = ("created", "seconds", "workers", "timings")


def test_two_workers_write_the_same_cache_as_one_process_byte_for_byte(tmp_path):
    data = _corpus(tmp_path / "data")
    one, _ = _prepare(data, tmp_path / "c1", workers=1)
    two, _ = _prepare(data, tmp_path / "c2", workers=2)

    assert one.meta["workers"] == 1 and two.meta["workers"] == 2
    assert one.fingerprint == two.fingerprint
    files = _files(one.cache.root)
    assert len(files) > 3 and files == _files(two.cache.root)
    strip = lambda m: {k: v for k, v in m.items() if k not in _VARYING}  # noqa: E731
    assert strip(one.meta) == strip(two.meta)
    # the drops, the ordinal-based names and the cleaners' counts are all there
    assert one.meta["dropped"]["malformed_json"] == 13
    assert one.meta["dropped"]["filtered_by_test.first_seen"] > 50
    assert set(one.meta["dropped"]) >= {"non_finite_value", "too_odd", "filtered_by_test.screen"}
    assert one.meta["cleaners"]["1:test.screen"]["by_label"] == two.meta["cleaners"]["1:test.screen"]["by_label"]
    rows = ArrowTable(two.tables["train"].files).iter_rows()
    assert all(r["text"].isupper() for r in rows)
    assert one.meta["cleaner_states"][0] == two.meta["cleaner_states"][0] != {"mean": 0.0}


def test_digests_and_examples_are_made_in_the_workers_and_change_nothing(tmp_path, monkeypatch):
    data = _corpus(tmp_path / "data")
    log = tmp_path / "pids"
    monkeypatch.setenv("PRIVET_TEST_PIDS", str(log))
    cleaners = [_Centre(), _Screen(), _FirstSeen(), _Shout()]
    one, _ = _prepare(data, tmp_path / "c1", workers=1)
    here = os.getpid()
    assert _pids(log, "examples") == {here} and _pids(log, "digest") == {here}
    log.unlink()
    two, _ = _prepare(data, tmp_path / "c2", workers=2, cleaners=cleaners)

    # the seen-set look-up ran here on the workers' digests; examples came from the workers
    assert cleaners[2].digested_here == 0
    assert _pids(log, "digest") and here not in _pids(log, "digest")
    assert _pids(log, "examples") and here not in _pids(log, "examples")
    assert _files(one.cache.root) == _files(two.cache.root)
    examples = ArrowTable(two.tables["train"].files).iter_rows()
    longest = two.meta["model_state"]["longest"]
    assert longest > 0 and all(e["pad"] == longest - len(e["text"]) and e["part"] == "train"
                               for e in examples)
    assert two.meta["examples"] == one.meta["examples"] == one.meta["counts"]


def test_an_encrypted_cache_is_sealed_and_holds_the_same_records_with_workers(tmp_path):
    from privet.crypto import Cipher, is_encrypted
    from privet.storage import protect

    data = _corpus(tmp_path / "data", files=3, lines=40)
    cipher = Cipher(bytes(range(32)))
    protect(tmp_path / "s1", cipher)
    protect(tmp_path / "s2", cipher)
    try:
        one, _ = _prepare(data, tmp_path / "s1", workers=1)
        two, _ = _prepare(data, tmp_path / "s2", workers=2)
    finally:
        protect(tmp_path / "s1", None)
        protect(tmp_path / "s2", None)
    sealed = _files(two.cache.root)
    assert sealed and all(is_encrypted(b) for b in sealed.values())
    for split in ("train", "val", "test"):
        assert list(one.tables[split].iter_rows()) == list(two.tables[split].iter_rows())


def test_on_error_fail_names_the_same_first_bad_line_with_workers(tmp_path):
    data = _corpus(tmp_path / "data", files=3, lines=40)
    messages = []
    for workers in (1, 2):
        with pytest.raises(privet.DataError) as err:
            _prepare(data, tmp_path / f"f{workers}", workers, on_error="fail")
        messages.append(str(err.value))
    assert messages[0] == messages[1] and messages[0].startswith("part-0.jsonl:23: bad record: malformed_json")


class _Exploding(privet.Cleaner):
    name = "test.exploding"

    def clean(self, record):
        if record["n"] == 70:
            raise ValueError("cleaner bug at n=70")
        return record


def test_a_cleaner_error_in_a_worker_reaches_the_preparing_process(tmp_path):
    data = _corpus(tmp_path / "data", files=3, lines=40)
    with pytest.raises(ValueError, match="cleaner bug at n=70") as err:
        _prepare(data, tmp_path / "c", 2, cleaners=[_Exploding()])
    assert any("preparation worker" in note for note in getattr(err.value, "__notes__", []))
    assert not list((tmp_path / "c").glob("*/meta.json"))


class _BadExamples(_Plain):
    def examples(self, records, split):
        for record in records:
            if record["n"] == 70:
                raise ValueError("examples bug at n=70")
            yield record


def test_an_examples_error_in_a_worker_reaches_the_preparing_process(tmp_path):
    data = _corpus(tmp_path / "data", files=3, lines=40)
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=2, max_bad_fraction=0.5,
                        shard_rows=30)
    preparer = Preparer(config, JsonLines(JsonLines.Options(paths=[data])), [_Centre()],
                        _BadExamples(), seed=3, fingerprint_extra={})
    with pytest.raises(ValueError, match="examples bug at n=70") as err:
        preparer.prepare(tmp_path / "c")
    assert any("preparation worker" in note for note in getattr(err.value, "__notes__", []))
    assert not list((tmp_path / "c").glob("*/meta.json"))


def test_components_that_cannot_be_pickled_are_prepared_in_one_process(tmp_path):
    class Local(privet.Cleaner):  # a class inside a function cannot be sent to a worker
        name = "test.local"

        def clean(self, record):
            return record

    data = _corpus(tmp_path / "data", files=2, lines=20)
    prepared, logs = _prepare(data, tmp_path / "c", 2, cleaners=[Local()])
    assert prepared.meta["workers"] == 1
    assert any("preparing in one process" in line for line in logs)


def test_cleaners_compared_across_records_and_those_after_them_run_in_order():
    class Resets(privet.Cleaner):
        def start_pass(self):
            pass

        def clean(self, record):
            return record

    class ResetsCountersOnly(Resets):
        per_record = True

    assert parallel_prefix([_Centre(), _Screen(), _FirstSeen(), _Shout()]) == 2
    assert parallel_prefix([ResetsCountersOnly(), _Screen()]) == 2
    assert parallel_prefix([Resets(), _Screen()]) == 0


def test_preparation_progress_reports_records_and_megabytes_per_second():
    stream = io.StringIO()
    progress = PrepProgress("log", total_bytes=4_000_000, stream=stream, log_every_s=3600.0)
    progress.phase("fit test.centre")
    progress.advance(300, 4_000_000)
    progress.phase("prepare")  # the fitting pass' summary is written when the next starts
    assert stream.getvalue().startswith("data fit test.centre: 300 records, 4.0 MB, ")
    progress.advance(512, 0)
    progress.advance(0, 2_000_000)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].startswith("data prepare: 512 records, 2.0 MB, ")
    assert "records/s" in lines[-1] and lines[-1].endswith("MB/s")
    silent = io.StringIO()
    quiet = PrepProgress("none", stream=silent)
    quiet.advance(10, 10)
    quiet.close()
    assert silent.getvalue() == ""


class _Napping(JsonLines):
    """Reads its shards as JSON Lines; the file named ``slow*`` keeps its worker busy until
    every other file was read (each leaves a ``.done`` mark), for at most 30 s."""

    def read_file(self, path):
        import time

        folder = Path(path).parent
        if Path(path).name.startswith("slow"):
            others = len(list(folder.glob("*.jsonl"))) - 1
            deadline = time.monotonic() + 30
            while len(list(folder.glob("*.done"))) < others and time.monotonic() < deadline:
                time.sleep(0.05)
        for location, record in super().read_file(path):
            yield location, {**record, "pid": os.getpid()}
        (folder / f"{Path(path).name}.done").touch()


def test_a_free_worker_takes_the_next_shard_and_the_stream_keeps_its_order(tmp_path):
    """Shards go to whichever worker is free: while one is held on the slow first shard,
    the other reads all the rest (a fixed deal would leave every other shard waiting
    behind the slow one); the stream still comes in shard order."""
    from privet.data.parallel import PassSpec, ProcessRunner

    data = tmp_path / "data"
    data.mkdir()
    names = ["slow.jsonl", *(f"f{i}.jsonl" for i in range(6))]
    for i, name in enumerate(names):
        (data / name).write_text(json.dumps({"text": name, "n": i}) + "\n")
    source = _Napping(_Napping.Options(paths=[data / n for n in names]))
    runner = ProcessRunner(source, [], 2)
    try:
        records = [(index, item[4]) for index, kind, payload in runner.run(source.shards(), PassSpec(0, {}, None, {}, 64))
                   if kind != "end" for item in payload if item[0] == "rec"]  # ("rec", where, path, split, record, digest)
    finally:
        runner.close()
    assert [item["n"] for _index, item in records] == list(range(7))
    assert [index for index, _item in records] == list(range(7))
    slow_pid = records[0][1]["pid"]
    assert {item["pid"] for _index, item in records[1:]} == {records[1][1]["pid"]} != {slow_pid}


def test_a_worker_blocked_on_a_pass_that_was_left_drops_it():
    """A worker whose queue is full with a pass the preparing process no longer reads
    gives up the message, so it is free for the next pass."""
    import multiprocessing
    import queue

    from privet.data.parallel import _put

    results = multiprocessing.get_context("spawn").Queue(maxsize=1)
    current = [1]
    assert _put(results, (1, 0, "chunk", []), lambda: current[0])
    current[0] = 2
    assert not _put(results, (1, 1, "chunk", []), lambda: current[0])  # full, and pass 1 was left
    assert results.get(timeout=5) == (1, 0, "chunk", [])
    with pytest.raises(queue.Empty):
        results.get(timeout=0.2)
