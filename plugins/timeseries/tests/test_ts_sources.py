"""Sources: CSV and Parquet rows become flat records; bad rows become BadRecords."""

from __future__ import annotations

import datetime as dt
import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privet import BadRecord, ConfigError, DataError


def test_long_csv_rows_become_records_with_time_series_and_floats(host, write_rows, read):
    path = write_rows("shop.csv", [
        {"timestamp": "2024-01-01T00:00:00", "shop": "a", "sales": "3", "temp": "1.5", "kind": "x"},
        {"timestamp": "2024-01-01T01:00:00Z", "shop": "b", "sales": "4.25", "temp": "", "kind": "y"},
    ])
    src = host.make("source", "timeseries.csv", {
        "paths": [str(path)], "series_column": "shop", "target_columns": ["sales"],
        "categorical_columns": ["kind"]})
    recs = read(src)
    assert recs == [
        {"time": 1704067200.0, "series": "a", "temp": 1.5, "kind": "x", "sales": 3.0},
        {"time": 1704070800.0, "series": "b", "temp": None, "kind": "y", "sales": 4.25},
    ]


def test_wide_csv_gives_one_record_per_series_column(host, write_rows, read):
    path = write_rows("wide.csv", [["2024-01-01", "1", "10"], ["2024-01-02", "2", "NA"]],
                      header=["date", "north", "south"])
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "layout": "wide",
                                                  "time_column": "date"})
    recs = read(src)
    assert [(r["series"], r["value"]) for r in recs] == [("north", 1.0), ("south", 10.0),
                                                          ("north", 2.0), ("south", None)]
    assert recs[2]["time"] - recs[0]["time"] == 86400.0


def test_bad_timestamps_numbers_and_column_counts_are_bad_records_with_lines(host, write_rows, read):
    path = write_rows("bad.csv", [
        ["2024-01-01T00:00", "1"],
        ["yesterday", "2"],
        ["2024-01-01T02:00", "many"],
        ["2024-01-01T03:00", "3", "extra"],
        ["2024-01-01T04:00", "4"],
    ], header=["timestamp", "value"])
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["value"]})
    recs = read(src)
    bad = [r for r in recs if isinstance(r, BadRecord)]
    assert [(b.reason, b.location) for b in bad] == [
        ("unparseable_timestamp", "bad.csv:3"), ("unparseable_number", "bad.csv:4"),
        ("wrong_column_count", "bad.csv:5")]
    assert "categorical_columns" in bad[1].detail
    assert [r["value"] for r in recs if not isinstance(r, BadRecord)] == [1.0, 4.0]


def test_nan_and_inf_cells_become_missing_or_are_dropped_by_rule(host, write_rows, read):
    path = write_rows("nan.csv", [["0", "nan"], ["1", "inf"], ["2", "5"]], header=["t", "v"])
    opts = {"paths": [str(path)], "time_column": "t", "target_columns": ["v"]}
    kept = read(host.make("source", "timeseries.csv", opts))
    assert [r["v"] for r in kept] == [None, None, 5.0]
    dropped = read(host.make("source", "timeseries.csv", {**opts, "non_finite": "drop"}))
    assert [getattr(r, "reason", None) for r in dropped] == ["non_finite_value", "non_finite_value", None]


def test_split_time_marks_rows_train_val_and_test(host, write_rows, read):
    rows = [{"timestamp": f"2024-01-{d:02d}", "v": d} for d in range(1, 8)]
    path = write_rows("s.csv", rows)
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"],
                                                  "split_time": "2024-01-04", "test_time": "2024-01-06"})
    assert [r["split"] for r in read(src)] == ["train"] * 3 + ["val"] * 2 + ["test"] * 2


def test_byte_range_chunks_cover_every_row_exactly_once_with_true_line_numbers(host, write_rows, read):
    rows = [[f"{i}", f"{i}.5"] for i in range(3000)]
    rows[2500][1] = "oops"
    path = write_rows("big.csv", rows, header=["t", "v"])
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": "t",
                                                  "target_columns": ["v"], "chunk_mb": 0.005})
    shards = src.shards()
    assert len(shards) > 4
    recs = read(src)
    good = [r["time"] for r in recs if not isinstance(r, BadRecord)]
    assert good == [float(i) for i in range(3000) if i != 2500]
    [bad] = [r for r in recs if isinstance(r, BadRecord)]
    assert bad.location == "big.csv:2502"  # header is line 1, row i is line i + 2


def test_gzipped_csv_and_undecodable_lines(host, tmp_path, read):
    path = tmp_path / "z.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"t,v\n1,1\n2,\xff\xfe\n3,3\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": "t",
                                                  "target_columns": ["v"]})
    recs = read(src)
    assert [r.reason if isinstance(r, BadRecord) else r["v"] for r in recs] == [1.0, "invalid_utf8", 3.0]
    assert recs[1].location == "z.csv.gz:3"


def test_missing_column_is_a_data_error_naming_file_and_option(host, write_rows, read):
    path = write_rows("m.csv", [{"when": "2024-01-01", "v": 1}])
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"]})
    with pytest.raises(DataError, match=r"m.csv: no column 'timestamp' .*time_column"):
        read(src)


def test_options_are_checked_when_the_pipeline_is_validated(host, write_rows):
    path = write_rows("o.csv", [{"timestamp": "2024-01-01", "v": 1}])
    with pytest.raises(ConfigError, match="target_columns"):
        host.make("source", "timeseries.csv", {"paths": [str(path)]})
    with pytest.raises(ConfigError, match="split_time"):
        host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"],
                                               "split_time": "not a time"})
    with pytest.raises(ConfigError, match="time_format"):
        host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"],
                                               "time_format": "dd/mm/yyyy"})


def test_parquet_streams_row_groups_with_arrow_timestamps_and_text(host, tmp_path, read):
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    table = pa.table({
        "ts": pa.array([t0 + dt.timedelta(hours=i) for i in range(10)], pa.timestamp("us", tz="UTC")),
        "id": pa.array(["a"] * 5 + ["b"] * 5),
        "y": pa.array([float(i) for i in range(9)] + [float("nan")]),
        "store": pa.array(["x", "y"] * 5),
    })
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=4)
    src = host.make("source", "timeseries.parquet", {"paths": [str(path)], "time_column": "ts",
                                                      "series_column": "id", "target_columns": ["y"]})
    assert len(src.shards()) == 3
    recs = read(src)
    assert len(recs) == 10
    assert recs[0] == {"time": t0.timestamp(), "series": "a", "store": "x", "y": 0.0}
    assert recs[9]["y"] is None and recs[9]["series"] == "b"


def test_parquet_unparseable_timestamp_names_the_row(host, tmp_path, read):
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"ts": ["2024-01-01", "soon", "2024-01-03"], "y": [1.0, 2.0, 3.0]}), path)
    src = host.make("source", "timeseries.parquet", {"paths": [str(path)], "time_column": "ts",
                                                      "target_columns": ["y"]})
    recs = read(src)
    assert isinstance(recs[1], BadRecord)
    assert (recs[1].reason, recs[1].location) == ("unparseable_timestamp", "q.parquet:row 2")


def test_an_unreadable_csv_header_is_one_bad_record_at_line_1(host, tmp_path, read):
    path = tmp_path / "h.csv"
    path.write_bytes(b"time\xff,value\n0,1\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": None,
                                                 "target_columns": ["value"]})
    items = [i for s in src.shards() for i in src.read(s)]
    assert [(i.reason, i.location) for i in items] == [("bad_csv_header", "h.csv:1")]
