"""Preparing a time-series corpus with worker processes: cleaners fitted by parts and
records written in the workers, windows made by groups of series in the workers, and a
cache byte for byte that of one process (and the windows of one pass over each split)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow as pa
import pytest

import privet
from privet.config import ComponentSpec, DataConfig, SplitConfig
from privet.data.prepare import Preparer
from privet_timeseries.models.base import TimeSeriesWarning, WindowModel


def write_csv(path: Path, series: int = 12, hours: int = 300) -> None:
    """A long CSV: ``series`` hourly series with missing values and spikes."""
    rng = random.Random(3)
    lines = ["series,timestamp,value,temp,load"]
    for h in range(hours):
        stamp = f"2021-{1 + h // 720:02d}-{1 + h // 24 % 30:02d}T{h % 24:02d}:00:00"
        for s in range(series):
            temp = "" if rng.random() < 0.05 else f"{20 + 5 * math.sin(h / 24) + rng.gauss(0, 1):.3f}"
            load = f"{rng.gauss(50, 10) * (8 if rng.random() < 0.01 else 1):.3f}"
            value = "" if rng.random() < 0.01 else f"{math.sin(h / 12 + s) * 10 + rng.gauss(0, 1):.4f}"
            lines.append(f"s{s:02d},{stamp},{value},{temp},{load}")
    path.write_text("\n".join(lines) + "\n")


def prepare(host, data: Path, cache: Path, workers: int):
    source = host.make("source", "timeseries.csv", {
        "paths": [str(data)], "time_column": "timestamp", "series_column": "series",
        "target_columns": ["value"], "split_time": "2021-01-10T00:00:00", "chunk_mb": 0.05})
    cleaners = [host.make("cleaner", "timeseries.outliers", {"method": "iqr", "per_series": True,
                                                              "exclude": ["value"]}),
                host.make("cleaner", "timeseries.impute", {"method": "mean", "exclude": ["value"]}),
                host.make("cleaner", "timeseries.calendar"),
                host.make("cleaner", "timeseries.scale", {"exclude": ["value"]})]
    model = host.make("model", "timeseries.lstm", {"input_length": 24, "horizon": 6,
                                                   "frequency": "1h", "stride": 3})
    config = DataConfig(source=ComponentSpec("x"), split=SplitConfig(method="field", field="split"),
                        prepare_workers=workers, shard_rows=700)
    return Preparer(config, source, cleaners, model, seed=0, fingerprint_extra={}).prepare(cache)


def arrow_files(prepared) -> dict[str, bytes]:
    root = prepared.cache.root
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.arrow"))}


def test_workers_and_groups_write_the_cache_of_one_process(host, tmp_path, monkeypatch):
    monkeypatch.setattr("privet_timeseries.series.MIN_GROUP_ROWS", 500)  # several groups a split
    data = tmp_path / "series.csv"
    write_csv(data)
    assert data.stat().st_size > 150_000  # several shards of 50 KB
    with pytest.warns(TimeSeriesWarning) as said:
        two = prepare(host, data, tmp_path / "two", 2)
    # the groups' counters are merged: one note per split, with the split's totals
    notes = [str(w.message) for w in said if "missing values were filled" in str(w.message)]
    assert [n.split("'")[1] for n in notes] == ["train", "val"]
    one = prepare(host, data, tmp_path / "one", 1)
    with monkeypatch.context() as m:  # no groups: one pass over each split, in this process
        m.setattr(WindowModel, "example_groups", lambda self, records, split: None)
        whole = prepare(host, data, tmp_path / "whole", 1)

    assert two.meta["workers"] == 2 and one.meta["workers"] == 1
    assert len(arrow_files(one)) > 4
    assert arrow_files(two) == arrow_files(one)
    records = lambda p: {k: v for k, v in arrow_files(p).items() if k.startswith("records/")}  # noqa: E731
    assert records(one) == records(whole)
    for name in records(one):  # in series order, so that a group reads one run of each file
        table = pa.ipc.open_file(pa.BufferReader(records(one)[name])).read_all()
        series = table.column("series").to_pylist()
        assert privet.in_record_order(table) and series == sorted(series), name
    for split in ("train", "val"):  # the groups' files hold the windows of one pass, in order
        assert list(one.tables[split].iter_rows()) == list(whole.tables[split].iter_rows())
    for key in ("counts", "examples", "dropped", "cleaners", "cleaner_states", "model_state"):
        assert two.meta[key] == one.meta[key] == whole.meta[key], key
    windowing = one.meta["model_state"]["windowing"]
    assert f"{windowing['train']['filled_values']} missing values" in notes[0]
    assert windowing["train"]["windows"] == one.meta["examples"]["train"] > 500
    assert windowing["val"]["windows"] == one.meta["examples"]["val"] > 100


def test_a_split_past_the_group_size_gets_more_groups_and_the_same_windows(host, tmp_path, monkeypatch):
    """More groups than MAX_GROUPS (each at most MAX_GROUP_ROWS, read as one run of each
    record file): the cache of 1 and 2 workers, and the windows of one pass."""
    monkeypatch.setattr("privet_timeseries.series.MIN_GROUP_ROWS", 1)
    monkeypatch.setattr("privet_timeseries.series.MAX_GROUP_ROWS", 200)  # a series a group in train
    data = tmp_path / "series.csv"
    write_csv(data)
    with pytest.warns(TimeSeriesWarning):
        two = prepare(host, data, tmp_path / "two", 2)
        one = prepare(host, data, tmp_path / "one", 1)
        with monkeypatch.context() as m:
            m.setattr(WindowModel, "example_groups", lambda self, records, split: None)
            whole = prepare(host, data, tmp_path / "whole", 1)
    groups = {f.split("-")[1] for f in arrow_files(one) if f.startswith("examples/train-g")}
    assert len(groups) == 12 > 8
    assert arrow_files(two) == arrow_files(one)
    for split in ("train", "val"):
        assert list(one.tables[split].iter_rows()) == list(whole.tables[split].iter_rows())
    assert one.meta["model_state"] == whole.meta["model_state"]


def test_an_error_in_a_group_made_by_a_worker_stops_preparation(host, tmp_path, monkeypatch):
    from privet import DataError

    monkeypatch.setattr("privet_timeseries.series.MIN_GROUP_ROWS", 500)
    data = tmp_path / "series.csv"
    write_csv(data)
    lines = data.read_text().splitlines()
    data.write_text("\n".join([*lines, lines[-1]]) + "\n")  # the last row of s11, twice
    source = host.make("source", "timeseries.csv", {
        "paths": [str(data)], "time_column": "timestamp", "series_column": "series",
        "target_columns": ["value"], "split_time": "2021-01-10T00:00:00", "chunk_mb": 0.05})
    model = host.make("model", "timeseries.lstm", {"input_length": 24, "horizon": 6,
                                                   "frequency": "1h", "duplicates": "error"})
    config = DataConfig(source=ComponentSpec("x"), split=SplitConfig(method="field", field="split"),
                        prepare_workers=2)
    preparer = Preparer(config, source, [], model, seed=0, fingerprint_extra={})
    with pytest.raises(DataError, match="series 's11': 1 rows share a timestamp"):
        preparer.prepare(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/meta.json"))


def test_group_files_the_workers_write_into_an_encrypted_cache_are_sealed(host, tmp_path, monkeypatch):
    from privet.crypto import Cipher, is_encrypted
    from privet.storage import protect

    monkeypatch.setattr("privet_timeseries.series.MIN_GROUP_ROWS", 500)
    data = tmp_path / "series.csv"
    write_csv(data, series=6, hours=200)
    with pytest.warns(TimeSeriesWarning):
        plain = prepare(host, data, tmp_path / "plain", 2)
    protect(tmp_path / "sealed", Cipher(bytes(range(32))))
    try:
        with pytest.warns(TimeSeriesWarning):
            sealed = prepare(host, data, tmp_path / "sealed", 2)
        windows = [list(sealed.tables[s].iter_rows()) for s in ("train", "val")]
    finally:
        protect(tmp_path / "sealed", None)
    files = list(sealed.cache.root.rglob("*.arrow"))
    assert any("-g0001-" in f.name for f in files)
    assert files and all(is_encrypted(f.read_bytes()) for f in files)
    assert not list(sealed.cache.root.rglob("spill"))
    assert windows == [list(plain.tables[s].iter_rows()) for s in ("train", "val")]
    assert sealed.meta["model_state"] == plain.meta["model_state"]
