"""The columnar path of preparation (Source.read_table, Cleaner.clean_table, record_tables):
an exact shortcut of the record path, shard by shard, whatever the number of workers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import privet
from privet.builtins.sources import JsonLines
from privet.config import ComponentSpec, DataConfig, SplitConfig
from privet.data.arrow import ArrowShardWriter, ArrowTable
from privet.data.prepare import Preparer
from privet.data.records import RecordStream, record_tables, records_table


def _note(what: str) -> None:
    log = os.environ.get("PRIVET_TEST_PIDS")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{what} {os.getpid()}\n")


class _TableJsonl(JsonLines):
    """JSON Lines that a clean file reads as one table (pyarrow.json); a file with a bad
    line declines (``None``), so its drops keep their line numbers."""

    def read_table(self, shard):
        import pyarrow as pa
        import pyarrow.json as pj

        try:
            table = pj.read_json(shard.path)
        except pa.ArrowInvalid:
            return None
        _note("read_table")
        return table


class _Centre(privet.Cleaner):
    """Fitted per record: subtracts the training mean of ``x``, fitted over tables."""

    name = "test.centre"
    needs_fit = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.mean = 0.0
        self.fitted_tables = 0

    def fit(self, records):
        total = count = 0
        for table in record_tables(records):
            self.fitted_tables += 1
            xs = [x for x in table.column("x").to_pylist() if x is not None]
            total += sum(xs)
            count += len(xs)
        self.mean = total / count

    def state_dict(self):
        return {"mean": self.mean}

    def load_state_dict(self, state):
        self.mean = state["mean"]

    def clean(self, record):
        return {**record, "x": record["x"] - self.mean}

    def clean_table(self, table):
        import pyarrow.compute as pc

        _note("clean_table")
        index = table.column_names.index("x")
        x = pc.subtract(pc.cast(table.column("x"), "double"), self.mean)
        return table.set_column(index, "x", x)


class _Screen(privet.Cleaner):
    """Filters some records and drops others; takes a table only when it keeps every row."""

    name = "test.screen"

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.kept = 0

    def clean(self, record):
        if record["n"] % 11 == 0:
            return None
        if record["n"] % 17 == 0:
            raise privet.DropRecord("too_odd", f"n={record['n']}")
        self.kept += 1
        return record

    def clean_table(self, table):
        ns = table.column("n").to_pylist()
        if any(n % 11 == 0 or n % 17 == 0 for n in ns):
            return None
        self.kept += len(ns)
        return table

    def report(self):
        return {"kept": self.kept}


class _Longest(privet.Model):
    """Fits over tables, examples one per record."""

    name = "test.longest"

    def fit(self, records):
        self.seen_tables = sum(1 for _ in record_tables(records))
        self.longest = max(len(r["text"]) for r in records)

    def state_dict(self):
        return {"longest": self.longest}

    def load_state_dict(self, state):
        self.longest = state["longest"]

    def build(self):
        raise NotImplementedError

    def encode(self, record):
        raise NotImplementedError

    def step(self, module, batch):
        raise NotImplementedError


def _corpus(folder: Path) -> Path:
    """Four files: clean (table all the way), screened rows (a cleaner declines), a
    malformed line and a NaN (the source declines)."""
    folder.mkdir()
    n = 0
    for f in range(4):
        lines = []
        for _ in range(60):
            n += 1
            if f == 0:
                while n % 11 == 0 or n % 17 == 0:
                    n += 1
            x = math.nan if (f == 3 and n % 13 == 0) else float(n % 7)
            lines.append(json.dumps({"n": n, "text": f"doc {n}", "x": x, "split": "train" if n % 5 else "val"}))
        if f == 2:
            lines[10] = "{not json"
        (folder / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _prepare(data: Path, cache: Path, source_cls, workers: int = 1, split: SplitConfig | None = None):
    source = source_cls(source_cls.Options(paths=[data]))
    cleaners = [_Centre(), _Screen()]
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=workers, max_bad_fraction=0.5,
                        shard_rows=50, split=split or SplitConfig(method="field", field="split"))
    model = _Longest()
    prepared = Preparer(config, source, cleaners, model, seed=1, fingerprint_extra={}).prepare(cache)
    return prepared, cleaners, model


def _rows(prepared):
    return {s: list(prepared.tables[s].iter_rows()) for s in ("train", "val", "test")}


@pytest.mark.parametrize("split", [SplitConfig(method="field", field="split"),
                                   SplitConfig(method="random", val=0.2, test=0.1),
                                   SplitConfig(method="ordered", val=0.2, test=0.1)],
                         ids=["field", "random", "ordered"])
def test_the_columnar_path_prepares_the_same_records_drops_and_counts(tmp_path, monkeypatch, split):
    data = _corpus(tmp_path / "data")
    log = tmp_path / "log"
    monkeypatch.setenv("PRIVET_TEST_PIDS", str(log))
    fast, fast_cleaners, fast_model = _prepare(data, tmp_path / "fast", _TableJsonl, split=split)
    assert log.read_text().count("read_table") >= 2  # the clean and the screened files
    slow, slow_cleaners, _ = _prepare(data, tmp_path / "slow", JsonLines, split=split)

    assert _rows(fast) == _rows(slow)
    assert sum(fast.meta["counts"].values()) > 150
    assert fast.meta["dropped"] == slow.meta["dropped"]
    assert set(fast.meta["dropped"]) == {"malformed_json", "non_finite_value", "too_odd",
                                         "filtered_by_test.screen"}
    assert fast.meta["cleaners"] == slow.meta["cleaners"]
    assert fast.meta["cleaner_states"] == slow.meta["cleaner_states"]
    assert fast.meta["model_state"] == slow.meta["model_state"]
    # the drops a source reports keep their lines
    assert fast.meta["dropped_examples"]["malformed_json"][0].startswith("part-2.jsonl:11: ")
    assert fast_cleaners[0].fitted_tables >= 2 and fast_model.seen_tables >= 1


def test_the_columnar_path_writes_the_same_cache_with_two_workers(tmp_path):
    data = _corpus(tmp_path / "data")
    one, _, _ = _prepare(data, tmp_path / "one", _TableJsonl, workers=1)
    two, _, _ = _prepare(data, tmp_path / "two", _TableJsonl, workers=2)

    files = lambda p: {str(f.relative_to(p.cache.root)): f.read_bytes()  # noqa: E731
                       for f in sorted(p.cache.root.rglob("*.arrow"))}
    assert two.meta["workers"] == 2
    assert len(files(one)) >= 3 and files(one) == files(two)
    assert one.meta["dropped"] == two.meta["dropped"]


def test_a_cleaner_that_changes_the_row_count_of_a_table_is_refused(tmp_path):
    class _Shrink(_Screen):
        def clean_table(self, table):
            return table.slice(1)

    data = _corpus(tmp_path / "data")
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=1, max_bad_fraction=0.5)
    preparer = Preparer(config, source, [_Shrink()], _Longest(), seed=1, fingerprint_extra={})
    with pytest.raises(privet.PluginError, match="clean_table returned 59 rows for 60"):
        preparer.prepare(tmp_path / "cache")


def test_record_tables_gives_tables_of_records_and_of_streams():
    records = [{"a": 1, "b": "x", "d": 1.5}, {"a": 2.5, "c": None, "d": True},
               {"a": "oops", "b": "y"}]
    (table,) = list(record_tables(records))
    assert table.column_names == ["a", "b", "d", "c"]
    assert table.column("a").to_pylist() == [1.0, 2.5, None]  # a stray text in numbers: null
    assert table.column("d").to_pylist() == [1.5, None, None]  # a bool is not a number
    assert table.column("b").to_pylist() == ["x", None, "y"]

    import pyarrow as pa

    first = pa.table({"a": [1, 2]})
    stream = RecordStream(lambda: [first, {"a": 3}, {"a": 4}])
    assert list(stream) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    tables = list(stream.tables())  # re-iterable: each view reads again
    assert tables[0] is first and tables[1].column("a").to_pylist() == [3, 4]
    assert records_table([]).num_rows == 0


def test_a_writer_keeps_the_order_of_records_and_tables_it_is_given(tmp_path):
    import pyarrow as pa

    writer = ArrowShardWriter(tmp_path, "train", shard_rows=4)
    writer.add({"i": 0})
    writer.add_table(pa.table({"i": [1, 2, 3]}))
    for i in (4, 5):
        writer.add({"i": i})
    writer.add_table(pa.table({"i": [6]}))
    writer.add({"i": 7})
    files = writer.close()
    assert [r["i"] for r in ArrowTable(files).iter_rows()] == list(range(8))
    assert [ArrowTable([f]).num_rows for f in files] == [4, 4]


class _Pairs(_Longest):
    """Examples span records (pairs of neighbours), written as tables."""

    def examples(self, records, split):
        for table in self.example_tables(records, split):
            yield from table.to_pylist()

    def example_tables(self, records, split):
        import pyarrow as pa

        for table in record_tables(records):
            ns = table.column("n").to_pylist()
            yield pa.table({"first": ns[:-1], "second": ns[1:], "split": [split] * (len(ns) - 1)})


def test_a_model_with_example_tables_has_them_written_as_they_are(tmp_path):
    data = _corpus(tmp_path / "data")
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=1, max_bad_fraction=0.5,
                        shard_rows=40, split=SplitConfig(method="field", field="split"))
    prepared = Preparer(config, source, [_Centre(), _Screen()], _Pairs(), seed=1,
                        fingerprint_extra={}).prepare(tmp_path / "cache")
    train = list(prepared.tables["train"].iter_rows())
    files = [str(prepared.cache.root / f) for f in prepared.meta["record_files"]["train"]]
    kept = [r["n"] for r in ArrowTable(files).iter_rows()]
    assert len(train) == prepared.meta["examples"]["train"] >= 100
    assert all(e["split"] == "train" and e["second"] > e["first"] for e in train)
    assert {e["first"] for e in train} < set(kept)


class _CentreByParts(_Centre):
    """:class:`_Centre` fitted by map and merge: each part is (sum, count, pid of its maker)."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.part_pids: list[int] = []

    def fit_table(self, table):
        xs = [x for x in table.column("x").to_pylist() if x is not None]
        return (sum(xs), len(xs), os.getpid())

    def fit_merge(self, parts):
        total = count = 0
        for s, n, pid in parts:
            total, count = total + s, count + n
            self.part_pids.append(pid)
        self.mean = total / count


def _prepare_by_parts(data: Path, cache: Path, workers: int, split: SplitConfig):
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    cleaners = [_Screen(), _CentreByParts()]
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=workers, max_bad_fraction=0.5,
                        shard_rows=50, split=split)
    prepared = Preparer(config, source, cleaners, _Longest(), seed=1, fingerprint_extra={}).prepare(cache)
    return prepared, cleaners[1]


def test_a_cleaner_fitted_by_parts_gets_them_from_the_workers_for_a_field_split(tmp_path):
    data = _corpus(tmp_path / "data")
    split = SplitConfig(method="field", field="split")
    one, one_fitted = _prepare_by_parts(data, tmp_path / "one", 1, split)
    two, two_fitted = _prepare_by_parts(data, tmp_path / "two", 2, split)

    # the training mean of x after the screen, as fitting on the records gives it
    train = [r for r in _rows(one)["train"]]
    expected = sum(r["x"] + one_fitted.mean for r in train) / len(train)
    assert one_fitted.mean == pytest.approx(expected)
    assert one.meta["cleaner_states"] == two.meta["cleaner_states"]
    files = lambda p: {str(f.relative_to(p.cache.root)): f.read_bytes()  # noqa: E731
                       for f in sorted(p.cache.root.rglob("*.arrow"))}
    assert files(one) == files(two)
    # the clean file's part comes from a worker (its rows never came back); the records of
    # the other files (the screen or the source declined their tables) make one part here
    here = os.getpid()
    assert one_fitted.part_pids == [here, here]
    assert two_fitted.part_pids[0] != here and two_fitted.part_pids[1:] == [here]


def test_a_cleaner_fitted_by_parts_makes_them_here_when_the_split_needs_the_whole_stream(tmp_path):
    data = _corpus(tmp_path / "data")
    split = SplitConfig(method="random", val=0.2, test=0.1)
    one, _ = _prepare_by_parts(data, tmp_path / "one", 1, split)
    two, fitted = _prepare_by_parts(data, tmp_path / "two", 2, split)

    assert fitted.part_pids and set(fitted.part_pids) == {os.getpid()}
    assert one.meta["cleaner_states"] == two.meta["cleaner_states"]
    assert _rows(one) == _rows(two)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_source_is_parsed_once_for_all_passes_and_the_spill_is_removed(tmp_path, monkeypatch, workers):
    data = _corpus(tmp_path / "data")
    log = tmp_path / "log"
    monkeypatch.setenv("PRIVET_TEST_PIDS", str(log))
    spilled, _, _ = _prepare(data, tmp_path / "cache", _TableJsonl, workers=workers)
    # two passes (fit the centre, then write) over four files, each parsed once: three
    # give a table (the NaN's the engine then declines), the bad line's a mark
    assert log.read_text().count("read_table") == 3
    assert not list((tmp_path / "cache").rglob("spill"))
    log.unlink()
    again, _, _ = _prepare(data, tmp_path / "again", _TableJsonl, workers=workers)
    files = lambda p: {str(f.relative_to(p.cache.root)): f.read_bytes()  # noqa: E731
                       for f in sorted(p.cache.root.rglob("*.arrow"))}
    assert files(spilled) == files(again)


def test_the_last_pass_unlinks_each_parsed_shard_once_it_has_mapped_it(tmp_path, monkeypatch):
    """The writing pass frees the spill shard by shard (its pages serve the records it
    writes next), and the table it mapped stays whole after the unlink."""
    from privet.data.shard_tables import read_shard_table

    data = _corpus(tmp_path / "data")
    log = tmp_path / "log"
    monkeypatch.setenv("PRIVET_TEST_PIDS", str(log))
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    spill = tmp_path / "spill"
    spill.mkdir()
    shard = next(s for s in source.shards() if source.read_table(s) is not None)
    log.unlink()
    parsed = read_shard_table(source, shard, str(spill))
    kept = list(spill.iterdir())
    assert len(kept) == 1
    mapped = read_shard_table(source, shard, str(spill))
    assert list(spill.iterdir()) == kept
    last = read_shard_table(source, shard, str(spill), last=True)
    assert not list(spill.iterdir())
    assert mapped.equals(parsed) and last.equals(parsed) and last.num_rows > 10
    assert log.read_text().count("read_table") == 1


def test_an_encrypted_cache_keeps_no_parsed_copy_of_the_source(tmp_path, monkeypatch):
    from privet.crypto import Cipher
    from privet.storage import protect

    data = _corpus(tmp_path / "data")
    log = tmp_path / "log"
    monkeypatch.setenv("PRIVET_TEST_PIDS", str(log))
    protect(tmp_path / "sealed", Cipher(bytes(range(32))))
    made: list[str] = []
    real_makedirs = privet.storage.Storage.makedirs

    def watch(self, rel=""):
        made.append(rel)
        return real_makedirs(self, rel)

    monkeypatch.setattr(privet.storage.Storage, "makedirs", watch)
    try:
        sealed, _, _ = _prepare(data, tmp_path / "sealed", _TableJsonl)
    finally:
        protect(tmp_path / "sealed", None)
    assert "spill" not in made
    assert log.read_text().count("read_table") == 6  # parsed again in each of the two passes
    assert sum(sealed.meta["counts"].values()) > 150


def test_files_the_workers_write_into_an_encrypted_cache_are_sealed(tmp_path):
    from privet.crypto import Cipher, is_encrypted
    from privet.storage import protect

    data = _corpus(tmp_path / "data")
    plain, _, _ = _prepare(data, tmp_path / "plain", _TableJsonl, workers=2)
    protect(tmp_path / "sealed", Cipher(bytes(range(32))))
    try:
        sealed, _, _ = _prepare(data, tmp_path / "sealed", _TableJsonl, workers=2)
        rows = _rows(sealed)
    finally:
        protect(tmp_path / "sealed", None)
    written = [f for f in sealed.cache.root.rglob("*.arrow")]
    by_worker = [f for f in written if len(f.stem.split("-")[1]) == 32]  # named after a shard
    assert by_worker and all(is_encrypted(f.read_bytes()) for f in written)
    assert rows == _rows(plain)


def test_a_cleaner_with_fit_table_but_no_fit_merge_is_refused_by_name(tmp_path):
    class _HalfParts(_Centre):
        def fit_table(self, table):
            return table.num_rows

    data = _corpus(tmp_path / "data")
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=1, max_bad_fraction=0.5,
                        split=SplitConfig(method="field", field="split"))
    preparer = Preparer(config, source, [_HalfParts()], _Longest(), seed=1, fingerprint_extra={})
    with pytest.raises(privet.PluginError, match="_HalfParts overrides fit_table but not fit_merge"):
        preparer.prepare(tmp_path / "cache")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 3.5e38, -3.5e38])
def test_a_table_with_a_number_the_record_path_drops_takes_that_path(bad):
    """has_non_finite decides whether a shard's table may skip the record path's per-value
    checks: one NaN, infinity or value beyond float32 anywhere (any chunk, beside nulls)
    sends it there."""
    import pyarrow as pa

    from privet.data.shard_tables import has_non_finite

    clean = pa.chunked_array([[1.0, None, -2.5], [None, None], [3.4e38, -3.4e38]])
    assert not has_non_finite(pa.table({"x": clean, "n": [1, 2, 3, 4, 5, 6, 7]}))
    assert not has_non_finite(pa.table({"x": pa.array([None, None], pa.float64())}))
    assert not has_non_finite(pa.table({"x": pa.array([1.0, 2.0], pa.float32())}))
    for chunks in ([[1.0, None], [2.0, bad]], [[bad, None, 1.0]], [[bad]]):
        assert has_non_finite(pa.table({"ok": pa.chunked_array([[0.0] * len(c) for c in chunks]),
                                        "x": pa.chunked_array(chunks)})), chunks
    assert has_non_finite(pa.table({"x": pa.array([[1.0]])}))  # lists: the record path


class _PairsByParity(_Pairs):
    """:class:`_Pairs` that has its records stored odd ``n`` first (Model.record_order)."""

    def record_order(self, table):
        import numpy as np

        return np.argsort(np.asarray(table.column("n")) % 2 == 0, kind="stable")


def _stored_ns(prepared, split):
    files = [str(prepared.cache.root / f) for f in prepared.meta["record_files"][split]]
    return [[r["n"] for r in ArrowTable([f]).iter_rows()] for f in files]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("split", [SplitConfig(method="field", field="split"),
                                   SplitConfig(method="random", val=0.2, test=0.1)],
                         ids=["field", "random"])
def test_record_files_of_a_model_with_examples_are_in_its_order_and_say_so(tmp_path, workers, split):
    """Record files written by the workers (a field split) and here (the others) alike
    hold each file's rows in the model's order, marked; the same records as without it."""
    data = _corpus(tmp_path / "data")
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))

    def prepare(model, name):
        config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=workers, max_bad_fraction=0.5,
                            shard_rows=40, split=split)
        return Preparer(config, source, [_Centre(), _Screen()], model, seed=1,
                        fingerprint_extra={}).prepare(tmp_path / name)

    ordered, plain = prepare(_PairsByParity(), "ordered"), prepare(_Pairs(), "plain")
    for s in ("train", "val"):
        files, before = _stored_ns(ordered, s), _stored_ns(plain, s)
        assert len(files) == len(before) >= 2
        for ns, was in zip(files, before):  # odd first, each part in its order in the file
            assert ns == [n for n in was if n % 2] + [n for n in was if n % 2 == 0]
        assert any(ns != was for ns, was in zip(files, before))
    for f in ordered.meta["record_files"]["train"]:
        assert privet.in_record_order(ArrowTable([str(ordered.cache.root / f)])._open()[0])
    for f in plain.meta["record_files"]["train"]:
        assert not privet.in_record_order(ArrowTable([str(plain.cache.root / f)])._open()[0])


def test_the_record_order_of_a_model_that_trains_on_the_records_is_not_asked(tmp_path):
    class Ordered(_Longest):
        def record_order(self, table):
            raise AssertionError("asked")

    data = _corpus(tmp_path / "data")
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=1, max_bad_fraction=0.5,
                        shard_rows=40, split=SplitConfig(method="field", field="split"))
    prepared = Preparer(config, source, [_Centre()], Ordered(), seed=1,
                        fingerprint_extra={}).prepare(tmp_path / "cache")
    assert prepared.meta["counts"]["train"] > 100


def test_a_table_split_field_is_read_in_any_case_like_the_record_path():
    """table_splits maps each row's split field as the record path does (``str(value)
    .lower()`` in the field-split names), over chunks; anything else sends the shard to
    the record path (False), which reports the rows."""
    import pyarrow as pa

    from privet.data.prepare import _FIELD_SPLITS
    from privet.data.shard_tables import SPLITS, table_splits

    column = pa.chunked_array([["Train", "VALID", "test"], ["validation", "TRAIN", "Val"]])
    codes = table_splits(pa.table({"split": column}), "split", _FIELD_SPLITS)
    assert codes.dtype == "int8"
    got = [SPLITS[c] for c in codes]
    assert list(got) == [_FIELD_SPLITS[str(v).lower()] for v in column.to_pylist()]
    assert list(got) == ["train", "val", "test", "val", "train", "val"]
    assert table_splits(pa.table({"split": ["train", "holdout"]}), "split", _FIELD_SPLITS) is False
    assert table_splits(pa.table({"split": ["train", None]}), "split", _FIELD_SPLITS) is False
    assert table_splits(pa.table({"split": [1, 2]}), "split", _FIELD_SPLITS) is False
    assert table_splits(pa.table({"x": [1]}), "split", _FIELD_SPLITS) is False
    assert table_splits(pa.table({"x": [1]}), None, _FIELD_SPLITS) is None


@pytest.mark.parametrize("order", [lambda n: list(range(n - 1)), lambda n: [0] * n,
                                   lambda n: [n] + list(range(1, n)), lambda n: [float(i) for i in range(n)]],
                         ids=["short", "repeats", "out_of_range", "floats"])
def test_a_record_order_that_is_not_a_permutation_is_refused_by_name(tmp_path, order):
    class Bad(_Pairs):
        name = "test.bad_order"

        def record_order(self, table):
            return order(table.num_rows)

    data = _corpus(tmp_path / "data")
    source = _TableJsonl(_TableJsonl.Options(paths=[data]))
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=1, max_bad_fraction=0.5,
                        shard_rows=40, split=SplitConfig(method="field", field="split"))
    with pytest.raises(privet.PluginError, match=r"model test.bad_order: record_order must return a permutation"):
        Preparer(config, source, [_Centre()], Bad(), seed=1, fingerprint_extra={}).prepare(tmp_path / "cache")


def test_a_fitting_pass_cleans_the_training_rows_of_a_shard_alone(tmp_path):
    """With the split known per row, a fitting pass cleans only a shard's training rows
    (per-row cleaners give them the same values) and skips a shard without any; the part
    is that of the training rows, and the count the whole shard's."""
    import pyarrow as pa

    from privet.data.parallel import PassSpec
    from privet.data.prepare import _FIELD_SPLITS
    from privet.data.shard_tables import shard_table

    class Seen(_Centre):
        def __init__(self):
            super().__init__()
            self.rows: list[int] = []

        def clean_table(self, table):
            self.rows.append(table.num_rows)
            return super().clean_table(table)

    class Tables(_TableJsonl):
        def read_table(self, shard):
            return tables[shard.path]

    tables = {"mixed": pa.table({"x": [1.0, 2.0, 3.0, 4.0], "split": ["train", "val", "Train", "test"]}),
              "val": pa.table({"x": [5.0, 6.0], "split": ["val", "val"]}),
              "val_nan": pa.table({"x": [math.nan, 6.0], "split": ["val", "test"]}),
              "train_nan": pa.table({"x": [math.nan, 6.0], "split": ["train", "val"]})}
    seen, fitter = Seen(), _CentreByParts()
    spec = PassSpec(1, {}, "split", _FIELD_SPLITS, 100, columnar=True, fit=True)
    source = Tables(Tables.Options(paths=[tmp_path]))

    def run(path):
        made = shard_table(source, privet.Shard(path), [seen], spec, fitter)
        return [item for batch in made for item in batch]

    [(tag, part, rows)] = run("mixed")
    assert (tag, rows, seen.rows) == ("part", 4, [2])  # 2 training rows cleaned, of 4
    assert part[:2] == (1.0 + 3.0, 2)  # centred by the mean 0 of a fresh cleaner
    assert run("val") == [("part", None, 2)] and seen.rows == [2]  # not cleaned at all
    assert run("val_nan") == [("part", None, 2)]  # no record way for rows the fit never sees
    made = shard_table(source, privet.Shard("train_nan"), [seen], spec, fitter)
    with pytest.raises(StopIteration) as declined:  # a training NaN: the record way names it
        next(made)
    assert declined.value.value is False and seen.rows == [2]
