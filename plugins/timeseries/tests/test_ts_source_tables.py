"""The columnar fast path of the sources: ``read_table`` gives exactly the records ``read``
yields (same keys in the same order, floats bit for bit, None for missing), or ``None``
for a shard with anything ``read`` reports or that needs its row-by-row rules.

Timing sanity (not asserted; 2-core dev box, one thread): 200,000 long-layout rows (ISO
time, series id, two numeric columns; 6.8 MB) in 3 MB shards: ``read_table`` 0.17 s (0.21 s
with every text cell quoted), ``read`` 1.2 s, before any cleaner touches a dict per row.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
import random
import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privet import BadRecord, DataError
from privet_timeseries.csv_cells import _NULL_CELLS, _read_cells, _typed_columns
from privet_timeseries.timeparse import (PY_WHITESPACE, iso_cells, number_cells, parse_time,
                                         strftime_cells, time_cells)


def _bits(value: Any) -> Any:
    """A value with floats as their bytes, so -0.0 != 0.0 and NaN == NaN in comparisons."""
    return struct.pack("<d", value) if isinstance(value, float) else value


def _same(table: Any, records: list[Any]) -> None:
    """``table`` holds ``records``: keys in order, values equal, floats bit for bit."""
    assert not any(isinstance(r, BadRecord) for r in records)
    rows = table.to_pylist()
    assert rows == records
    if records:
        assert table.column_names == list(records[0])
    assert [{k: _bits(v) for k, v in r.items()} for r in rows] == \
           [{k: _bits(v) for k, v in r.items()} for r in records]
    for name in table.column_names:  # floats as float64, text as strings
        assert table.schema.field(name).type in (pa.float64(), pa.string())


def _check_all(source: Any) -> list[Any]:
    """Every shard's table equals its records; the records of all shards, in order."""
    out = []
    for shard in source.shards():
        records = list(source.read(shard))
        table = source.read_table(shard)
        assert table is not None, shard
        _same(table, records)
        out.extend(records)
    return out


def _declines(source: Any) -> bool:
    return any(source.read_table(shard) is None for shard in source.shards())


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


# --- CSV, long layout ------------------------------------------------------------------

def test_long_csv_with_series_gaps_markers_and_categoricals(host, tmp_path):
    path = _csv(tmp_path, "shop.csv",
                "timestamp,shop,sales,temp,kind\n"
                "2024-01-01T00:00:00,a,3,1.5,x\n"
                "2024-01-01T01:00:00Z,b,4.25,,y\n"
                "2024-01-01 02:00, a ,NA,-,N/A\n"
                "2024-01-01T03:00:00.250+02:00,b,  7 ,null, z \n"
                "2024-01-02,c,nan,inf,NaT\n"
                "2024-01-02T04:05:06.5-05:30,c,-0,1e-5,None\n"
                "1704067200,d,0.1,.5,-\n")
    src = host.make("source", "timeseries.csv", {
        "paths": [str(path)], "series_column": "shop", "target_columns": ["sales"],
        "categorical_columns": ["kind"]})
    records = _check_all(src)
    assert records[2] == {"time": 1704074400.0, "series": "a", "temp": None, "kind": None,
                          "sales": None}
    assert records[3]["kind"] == "z" and records[3]["sales"] == 7.0
    assert records[4]["sales"] is None and records[4]["temp"] is None  # nan, inf: missing
    assert list(records[0]) == ["time", "series", "temp", "kind", "sales"]


def test_long_csv_without_series_column_is_named_after_the_file_and_crlf_lines(host, tmp_path):
    path = _csv(tmp_path, "meter.v2.csv", "t,v,w\r\n0,1,2\r\n\r\n60,,3\r\n   \r\n120,4,\r\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": "t",
                                                  "time_format": "unix",
                                                  "target_columns": ["v"]})
    records = _check_all(src)
    assert [r["series"] for r in records] == ["meter"] * 3
    assert [r["time"] for r in records] == [0.0, 60.0, 120.0]


def test_floats_are_read_bit_for_bit_like_python_float(host, tmp_path):
    rng = random.Random(5)
    cells = ["9007199254740993", "0.1000000000000000055511151231257827021181583404541015625",
             "4.9e-324", "2.4703282292062328e-324", "1.7976931348623157e308", "1e-400", "1e400",
             "-1e400", "123456789012345678901234567890", "+.5e+3", "5.", "-0.0", "00012"]
    cells += [repr(rng.uniform(-1e6, 1e6)) for _ in range(300)]
    cells += [f"{rng.uniform(-1, 1):.{rng.randint(1, 25)}e}" for _ in range(300)]
    rows = "".join(f"{i},{c}\n" for i, c in enumerate(cells))
    path = _csv(tmp_path, "f.csv", "t,v\n" + rows)
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": "t",
                                                  "target_columns": ["v"]})
    records = _check_all(src)
    assert records[0]["v"] == 9007199254740992.0 and records[6]["v"] is None  # 1e400: inf


def test_byte_range_shards_each_match_read_and_together_cover_the_file(host, tmp_path):
    lines = [f"2024-01-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00,s{i % 3},"
             f"{i * 0.37:.6g},{'' if i % 7 == 0 else i % 5}\n" for i in range(4000)]
    path = _csv(tmp_path, "big.csv", "timestamp,id,v,x\n" + "".join(lines))
    src = host.make("source", "timeseries.csv", {
        "paths": [str(path)], "series_column": "id", "target_columns": ["v"], "chunk_mb": 0.01})
    shards = src.shards()
    assert len(shards) > 5
    records = _check_all(src)
    assert len(records) == 4000
    assert [r["v"] for r in records] == [float(f"{i * 0.37:.6g}") for i in range(4000)]


def test_split_time_and_test_time_columns(host, tmp_path):
    rows = "".join(f"2024-01-{d:02d}T12:00,{d}\n" for d in range(1, 10))
    path = _csv(tmp_path, "s.csv", "timestamp,v\n" + rows)
    src = host.make("source", "timeseries.csv", {
        "paths": [str(path)], "target_columns": ["v"],
        "split_time": "2024-01-04T12:00", "test_time": "2024-01-07"})
    records = _check_all(src)
    assert [r["split"] for r in records] == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert list(records[0]) == ["time", "split", "series", "v"]


@pytest.mark.parametrize("fmt, cells", [
    ("unix", ["0", "1704067200", "1704067200.25", " 17e8 ", "-86400"]),
    ("unix_ms", ["0", "1704067200123", "1704067200123.5", "1"]),
    ("%d/%m/%Y %H:%M", ["01/02/2024 03:04", "1/2/2024 3:04", "31/12/1999  23:59", "29/02/2024 0:0"]),
    ("%Y%m%d%H%M", ["202401011200", "20241231235", "20241115123"]),
    ("%y-%m-%dT%H:%M:%S.%f", ["68-01-01T00:00:00.5", "69-12-31t23:59:59.123456", "00-1-1T1:2:3.01"]),
])
def test_time_formats_match_parse_time(host, tmp_path, fmt, cells):
    rows = "".join(f"{c},{i}\n" for i, c in enumerate(cells))
    path = _csv(tmp_path, "f.csv", "when,v\n" + rows)
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": "when",
                                                  "time_format": fmt, "target_columns": ["v"]})
    records = _check_all(src)
    assert [r["time"] for r in records] == [parse_time(c, fmt) for c in cells]


def test_wide_layout_one_record_per_series_column(host, tmp_path):
    path = _csv(tmp_path, "wide.csv", "date,north,south,region\n2024-01-01,1,10,x\n"
                                      "2024-01-02,2,NA,\n2024-01-03,,3.5,y\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "layout": "wide",
                                                  "time_column": "date",
                                                  "categorical_columns": ["region"]})
    records = _check_all(src)
    assert [(r["series"], r["value"], r["region"]) for r in records] == [
        ("north", 1.0, "x"), ("south", 10.0, "x"), ("north", 2.0, None),
        ("south", None, None), ("north", None, "y"), ("south", 3.5, "y")]


def test_quoted_cells_and_other_delimiters(host, tmp_path):
    path = _csv(tmp_path, "q.csv", '"timestamp","id","v","note"\n'
                                   '"2024-01-01","a","1.5","x, y"\n'
                                   '2024-01-02,"b",2,"say ""hi"""\n'
                                   '2024-01-03,c,"",""\n')
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "series_column": "id",
                                                  "target_columns": ["v"],
                                                  "categorical_columns": ["note"]})
    records = _check_all(src)
    assert [r["note"] for r in records] == ["x, y", 'say "hi"', None]
    tsv = _csv(tmp_path, "t.tsv.csv", "timestamp\tv\n2024-01-01\t1\n2024-01-02\t\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(tsv)], "delimiter": "\t",
                                                  "target_columns": ["v"]})
    assert [r["v"] for r in _check_all(src)] == [1.0, None]


def test_an_empty_shard_and_a_header_only_file_give_empty_tables(host, tmp_path):
    path = _csv(tmp_path, "h.csv", "timestamp,v\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"]})
    [shard] = src.shards()
    assert list(src.read(shard)) == [] and src.read_table(shard).num_rows == 0


def test_gzipped_csv_is_one_shard_read_whole(host, tmp_path):
    path = tmp_path / "z.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"t,v\n1,1\n2,\n3,3.5\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "time_column": "t",
                                                  "target_columns": ["v"], "chunk_mb": 0.00001})
    assert [r["v"] for r in _check_all(src)] == [1.0, None, 3.5]


#: Cells of every kind, clean and not, for the random files below.
_ODD_CELLS = ["", " ", "NA", "na ", " NULL", "-", "1", " 1.5", "2.25 ", "1_0", "nan", "-inf",
              '"x"', '"a,b"', 'a"b', "x", "\t", "\u00a0 1", "1e400", "+.5", "5.", "0x1", '""',
              '" 3 "', "\u3000NA", "\u0663", "1,2"]
_TIMES = ["2024-01-01", "2024-01-01T10:00", "2024-01-01 10:00:00.5Z", "1704067200",
          "2024-02-30", " 1704067200.5 ", "2024-01-01T10:00+01:00", "yesterday", "", "nan"]


@pytest.mark.parametrize("seed", range(4))
def test_random_files_give_the_records_of_read_or_decline(host, tmp_path, seed):
    """Whenever a shard is read as a table, the table is what ``read`` gives."""
    rng = random.Random(seed)
    accepted = 0
    for i in range(40):
        odd = rng.choice([0.0, 0.0, 0.03, 0.2])
        lines = []
        for _ in range(rng.randint(0, 25)):
            cells = [rng.choice(_TIMES[:4] if rng.random() > odd else _TIMES)]
            cells += [rng.choice(["1", "2.5", "", "NA", " 3 ", "-0"] if rng.random() > odd
                                 else _ODD_CELLS) for _ in range(3)]
            lines.append(",".join(cells))
        eol = rng.choice(["\n", "\r\n"])
        path = _csv(tmp_path, f"r{i}.csv", eol.join(["timestamp,id,v,w", *lines]) + eol)
        options: dict[str, Any] = {"paths": [str(path)], "chunk_mb": rng.choice([0, 0.0002]),
                                   "non_finite": rng.choice(["missing", "drop"])}
        if rng.random() < 0.3:
            options.update(layout="wide", categorical_columns=["w"])
        else:
            options.update(target_columns=["v"], series_column=rng.choice(["id", None]),
                           categorical_columns=rng.choice([[], ["w"]]))
        src = host.make("source", "timeseries.csv", options)
        for shard in src.shards():
            table = src.read_table(shard)
            if table is not None:
                _same(table, list(src.read(shard)))
                accepted += 1
    assert accepted >= 20


# --- the typed read: numbers straight from Arrow's parser, or the string path -----------

def _typed_taken(path: Path, header: list[str], numeric: list[str]) -> bool:
    data = path.read_bytes().split(b"\n", 1)[1]
    return _typed_columns(data, header, ",", numeric) is not None


@pytest.mark.parametrize("cell, typed, table", [
    ("1e5", True, True), ("+1.5", True, True), (".5", True, True), ("5.", True, True),
    ("-0", True, True), (" 1.5", True, True), ("\t2 ", True, True), ('" 3 "', True, True),
    ("nan", True, True), (" nan ", True, True), ("NaN", True, True), ("-Infinity", True, True),
    ("inf", True, True), ("1e400", True, True), ("NA", True, True), ("nUlL", True, True),
    ('"NA"', True, True), ('""', True, True), ("-", True, True),
    (" NA", False, True), ("\u00a01", False, True), (" ", False, True), ("1\x0b", False, True),
    ("1_000", False, False), ("0x10", False, False), ("nan(1)", False, False),
    ("\u0663", False, False), ("1,2", False, False),
])
def test_typed_read_or_string_fallback_gives_what_read_gives(host, tmp_path, cell, typed, table):
    """Cells Arrow reads as ``float`` does take the typed path; the rest fall back to the
    string path, which reads them as ``read`` does or declines."""
    path = _csv(tmp_path, "n.csv", f"timestamp,v,note\n2024-01-01,{cell},a\n2024-01-02,2,b\n")
    assert _typed_taken(path, ["timestamp", "v", "note"], ["v"]) is typed
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"],
                                                  "categorical_columns": ["note"]})
    [shard] = src.shards()
    got = src.read_table(shard)
    assert (got is not None) is table
    if got is not None:
        _same(got, list(src.read(shard)))


@pytest.mark.parametrize("non_finite", ["missing", "drop"])
def test_non_finite_cells_of_the_typed_read_follow_the_option(host, tmp_path, non_finite):
    path = _csv(tmp_path, "nf.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,-INF\n2024-01-03,nan\n")
    assert _typed_taken(path, ["timestamp", "v"], ["v"])
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"],
                                                  "non_finite": non_finite})
    [shard] = src.shards()
    if non_finite == "drop":
        assert src.read_table(shard) is None
        assert [r.reason for r in src.read(shard) if isinstance(r, BadRecord)] == \
               ["non_finite_value"] * 2
    else:
        assert src.read_table(shard).column("v").to_pylist() == [1.0, None, None]


def test_a_paren_falls_back_only_with_a_nan_in_a_number_column(host, tmp_path):
    """Arrow reads ``nan(chars)``, ``float`` does not: a NaN next to a ``(`` is read as text."""
    header = ["timestamp", "v", "note"]
    clean = _csv(tmp_path, "p1.csv", "timestamp,v,note\n2024-01-01,1.5,(a)\n")
    assert _typed_taken(clean, header, ["v"])
    mixed = _csv(tmp_path, "p2.csv", "timestamp,v,note\n2024-01-01,nan,(a)\n")
    assert not _typed_taken(mixed, header, ["v"])
    src = host.make("source", "timeseries.csv", {"paths": [str(mixed)], "target_columns": ["v"],
                                                  "categorical_columns": ["note"]})
    assert [r["v"] for r in _check_all(src)] == [None]


def test_a_line_as_long_as_the_field_limit_falls_back_and_declines(host, tmp_path):
    path = _csv(tmp_path, "long.csv", "timestamp,v\n2024-01-01,1\n2024-01-02," + "0" * 300 + "1\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"]})
    [shard] = src.shards()
    assert _typed_taken(path, ["timestamp", "v"], ["v"])
    old = csv.field_size_limit(200)
    try:
        assert not _typed_taken(path, ["timestamp", "v"], ["v"])
        assert [getattr(r, "reason", None) for r in src.read(shard)] == [None, "unreadable_row"]
        assert src.read_table(shard) is None
    finally:
        csv.field_size_limit(old)


def test_arrow_typed_numbers_agree_with_float_where_it_reads_them():
    """Every cell Arrow reads as float64 is a missing marker or what ``float`` reads; of
    the spellings only ``float`` refuses, each has a ``(`` (the fallback's sign)."""
    rng = random.Random(7)
    parts = [" ", "\t", "\x0b", "+", "-", ".", "e", "E", "0", "7", "12", "1_0", "0x", "nan", "NaN",
             "inf", "INF", "inity", "(", ")", "(a_1)", "na", "N/A", "null", "None", "nat", "\u00a0"]
    cells = ["".join(rng.choice(parts) for _ in range(rng.randint(1, 5))) for _ in range(3000)]
    cells += ["nan", "-nan", "+inf", "Infinity", "-INFINITY", "1e-400", "9" * 400, "N/A", "NaT"]
    read = paren = 0
    for cell in cells:
        if '"' in cell or "," in cell:
            continue
        try:
            got = _read_cells(f"{cell},1\n".encode(), ["v", "w"], ",", {"v": pa.float64()},
                              null_values=_NULL_CELLS, strings_can_be_null=False,
                              quoted_strings_can_be_null=True).column("v")[0].as_py()
        except pa.ArrowInvalid:
            continue
        read += 1
        if got is None:
            assert cell.strip().lower() in {"", "na", "n/a", "null", "none", "nat", "-"}, cell
            continue
        want = _scalar(float, cell)
        if want is None:
            assert "(" in cell and math.isnan(got), cell
            paren += 1
        else:
            assert _bits(got) == _bits(want) or (math.isnan(got) and math.isnan(want)), cell
    assert read >= 300 and paren >= 1


def test_time_cells_parse_each_distinct_text_once_with_the_same_values():
    cells = ["2024-01-01T10:00", " 2024-01-01T10:00 ", "1704067200", "2024-01-01T10:00"] * 3
    want = [parse_time(c) for c in cells]
    assert [_bits(v) for v in time_cells(pa.array(cells), "auto").to_pylist()] == \
           [_bits(v) for v in want]
    chunked = pa.chunked_array([cells[:5], cells[5:]])
    assert time_cells(chunked, "auto").to_pylist() == want
    assert time_cells(pa.array(["2024-01-01", "soon", "2024-01-01"]), "auto") is None
    assert time_cells(pa.array(["01/02/2024"] * 3), "%d/%m/%Y").to_pylist() == \
           [parse_time("01/02/2024", "%d/%m/%Y")] * 3


# --- what declines ---------------------------------------------------------------------

@pytest.mark.parametrize("body, options", [
    ("2024-01-01,1\n2024-01-02,2,3\n", {}),                   # wrong column count
    ("2024-01-01,1\n2024-01-02,lots\n", {}),                  # not a number
    ("2024-01-01,1\n2024-01-02,1_000\n", {}),                 # float() reads it: the record path
    ("2024-01-01,1\nyesterday,2\n", {}),                      # unparseable time
    ("2024-01-01,1\n2024-01-31T24:00,2\n", {}),               # hour 24
    ("2024-01-01,1\n2024-02-30,2\n", {}),                     # no such day
    ("2024-01-01,1\n,2\n", {}),                               # missing time
    ("2024-01-01,1\n2024-01-02,nan\n", {"non_finite": "drop"}),
    ("2024-01-01,1\n2024-01-02,1e999\n", {"non_finite": "drop"}),
    ('2024-01-01,"1\n2"\n', {}),                              # a quoted newline
    ('2024-01-01,1"2\n', {}),                                 # a stray quote
    ("2024-01-01,1\r2024-01-02,2\n", {}),                     # a lone CR
    ("2024-01-01,\x001\n", {}),                               # NUL
])
def test_rows_read_would_report_or_treat_specially_decline(host, tmp_path, body, options):
    path = _csv(tmp_path, "bad.csv", "timestamp,v\n" + body)
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"],
                                                  **options})
    assert _declines(src)


def test_invalid_utf8_and_missing_series_ids_decline(host, tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(b"timestamp,v\n2024-01-01,1\n2024-01-02,\xff\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"]})
    assert any(isinstance(r, BadRecord) for r in src.read(src.shards()[0]))
    assert _declines(src)
    path = _csv(tmp_path, "ids.csv", "timestamp,id,v\n2024-01-01,a,1\n2024-01-02, ,2\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "series_column": "id",
                                                  "target_columns": ["v"]})
    assert _declines(src)


def test_utf8_beyond_ascii_takes_the_table_path_and_bad_bytes_in_a_text_column_decline(host, tmp_path):
    """A shard that is not all ASCII is checked as UTF-8 (valid: read as a table, the
    same records; invalid anywhere, a series id too: the record path reports it)."""
    path = _csv(tmp_path, "ids.csv", 'timestamp,id,v\n2024-01-01,café,1\n2024-01-02,"ß ""x""",2\n')
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "series_column": "id",
                                                  "target_columns": ["v"]})
    assert [r["series"] for r in _check_all(src)] == ["café", 'ß "x"']
    path.write_bytes(b"timestamp,id,v\n2024-01-01,caf\xe9,1\n")
    assert any(isinstance(r, BadRecord) for r in src.read(src.shards()[0]))
    assert _declines(src)


def test_shards_ending_inside_lines_read_on_to_their_newlines(host, tmp_path):
    """Each byte-range shard reads the lines that start in it, the last one to its end
    (a shard boundary every few bytes: mid-line, on a newline, at the file's end)."""
    lines = [f"2024-01-01T{i % 24:02d}:00:00,s{i % 2},{i}.5\n" for i in range(40)]
    path = _csv(tmp_path, "lines.csv", "timestamp,id,v\n" + "".join(lines)[:-1])  # no final newline
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "series_column": "id",
                                                  "target_columns": ["v"], "chunk_mb": 37 / (1 << 20)})
    assert len(src.shards()) > 20
    assert [r["v"] for r in _check_all(src)] == [i + 0.5 for i in range(40)]


def test_a_missing_column_declines_and_read_raises(host, tmp_path):
    path = _csv(tmp_path, "m.csv", "when,v\n2024-01-01,1\n")
    src = host.make("source", "timeseries.csv", {"paths": [str(path)], "target_columns": ["v"]})
    assert _declines(src)
    with pytest.raises(DataError, match="no column 'timestamp'"):
        list(src.read(src.shards()[0]))


# --- Parquet ---------------------------------------------------------------------------

def test_parquet_row_groups_with_timestamps_ints_text_and_nan(host, tmp_path):
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    table = pa.table({
        "ts": pa.array([t0 + dt.timedelta(hours=i, microseconds=7 * i) for i in range(10)],
                       pa.timestamp("us", tz="Europe/Paris")),
        "id": pa.array(["a"] * 5 + ["b "] * 5),
        "y": pa.array([float(i) / 3 for i in range(8)] + [float("nan"), None]),
        "n": pa.array(list(range(9)) + [None], pa.int32()),
        "store": pa.array(["x", "NA", None, "y", " z "] * 2),
        "flag": pa.array([True, False] * 5),
        "cat": pa.array(["p", "q"] * 5).dictionary_encode(),
        "f32": pa.array([0.1 * i for i in range(10)], pa.float32()),
    })
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=4)
    src = host.make("source", "timeseries.parquet", {
        "paths": [str(path)], "time_column": "ts", "series_column": "id",
        "target_columns": ["y"], "split_time": "2024-03-01T05:00"})
    records = _check_all(src)
    assert len(records) == 10 and records[9]["series"] == "b" and records[8]["y"] is None
    assert records[0]["time"] == t0.timestamp()


@pytest.mark.parametrize("column", [
    pa.array(["2024-01-01", "2024-01-02T10:00:00.5Z"]),
    pa.array([1704067200, 1704067201], pa.int64()),
    pa.array([dt.date(2024, 1, 1), dt.date(1999, 12, 31)], pa.date32()),
    pa.array([dt.datetime(2024, 1, 1, 1, 2, 3), dt.datetime(2000, 1, 1)], pa.timestamp("s")),
    pa.array([dt.datetime(2024, 1, 1, 1, 2, 3, 4000), dt.datetime(2000, 1, 1)], pa.timestamp("ms")),
])
def test_parquet_time_column_types(host, tmp_path, column):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"ts": column, "y": [1.0, 2.0]}), path)
    src = host.make("source", "timeseries.parquet", {"paths": [str(path)], "time_column": "ts",
                                                      "target_columns": ["y"]})
    _check_all(src)


@pytest.mark.parametrize("table", [
    pa.table({"ts": ["2024-01-01", "soon"], "y": [1.0, 2.0]}),
    pa.table({"ts": ["2024-01-01", None], "y": [1.0, 2.0]}),
    pa.table({"ts": ["2024-01-01", "2024-01-02"], "y": pa.array([1, 2], pa.decimal128(5, 1))}),
    pa.table({"ts": pa.array([0, 1], pa.timestamp("ns")), "y": [1.0, 2.0]}),
    pa.table({"ts": [0, 2**60], "y": [1.0, 2.0]}),
])
def test_parquet_declines_bad_rows_and_types_that_need_python(host, tmp_path, table):
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    src = host.make("source", "timeseries.parquet", {"paths": [str(path)], "time_column": "ts",
                                                      "target_columns": ["y"]})
    assert _declines(src)


# --- the columnar time and number parsers against the scalar ones ----------------------

def test_py_whitespace_is_what_str_strip_removes():
    assert PY_WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def _scalar(fn: Any, text: str) -> Any:
    try:
        value = fn(text)
    except ValueError:
        return None
    return value


def test_number_cells_agree_with_float_where_they_accept():
    cells = ["1", "-2.5", "+.5", "5.", "1e5", "1E-05", "nan", "-Inf", "infinity", "0x10",
             "1_0", "1e", "", ".", "e5", "1.5.5", "١٢", "--1", "9" * 400]
    out = number_cells(pa.array(cells)).to_pylist()
    for text, got in zip(cells, out):
        want = _scalar(float, text)
        if got is None:
            continue
        assert want is not None and (got == want or (math.isnan(got) and not math.isfinite(want)))
    assert out[:5] == [1.0, -2.5, 0.5, 5.0, 1e5] and out[9:12] == [None] * 3


ISO_CELLS = [
    "2024-01-01", "2024-02-29", "2023-02-29", "2024-12-31T23:59:59", "2024-01-01 00:00",
    "2024-01-01T00:00:00.1", "2024-01-01T00:00:00.12", "2024-01-01T00:00:00.123",
    "2024-01-01T00:00:00.1234", "2024-01-01T00:00:00.123456", "2024-01-01T00:00:00.1234567",
    "2024-01-01T00:00Z", "2024-01-01T00:00:00+05:30", "2024-01-01T00:00:00-23:59",
    "2024-01-01T00:00:00+24:00", "2024-01-01T24:00", "2024-01-01T23:60", "2024-01-01T23:59:60",
    "2024-13-01", "2024-00-10", "2024-01-00", "0000-01-01", "1600-01-01", "2300-01-01",
    "2024-01-01T10", "2024-01-01t10:00", "20240101", "2024-01-01+00:00", "2024-1-1",
    "1970-01-01T00:00:00.000001", "1969-12-31T23:59:59.999999Z", "2000-02-29T12:34:56.789-01:00",
]


def test_iso_cells_agree_with_parse_time_where_they_accept():
    got = iso_cells(pa.array(ISO_CELLS)).to_pylist()
    accepted = 0
    for text, value in zip(ISO_CELLS, got):
        if value is not None:
            assert _bits(value) == _bits(parse_time(text)), text
            accepted += 1
    assert accepted >= 11  # 15 on Python 3.11+ (3.10 reads 3 or 6 fraction digits only)
    rng = random.Random(1)
    many = [f"{rng.randint(1700, 2250)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
            f".{rng.randint(0, 999999):06d}" for _ in range(2000)]
    assert [_bits(v) for v in iso_cells(pa.array(many)).to_pylist()] == \
           [_bits(parse_time(t)) for t in many]


@pytest.mark.parametrize("fmt", ["%Y%m%d%H%M", "%d/%m/%Y %H:%M", "%m%d", "%Y-%m-%d %H:%M:%S.%f",
                                 "%y%m%d", "%H:%M", "%Y-%m-%dT%H:%M:%S%%"])
def test_strftime_cells_agree_with_strptime_where_they_accept(fmt):
    rng = random.Random(hash(fmt) % 1000)
    digits = "0123456789"
    cells = ["".join(rng.choice(digits + "/-: .T%") if rng.random() < 0.3 else rng.choice(digits)
                     for _ in range(rng.randint(3, 20))) for _ in range(3000)]
    cells += [dt.datetime(2024, 1, 1, 13, 5, 7, 12).strftime(fmt.replace("%%", "%%"))]
    for text in cells:
        got = strftime_cells(pa.array([text.strip()]), fmt)
        want = _scalar(lambda t: parse_time(t, fmt), text)
        if got is not None:
            assert want is not None and _bits(got[0].as_py()) == _bits(want), (text, fmt)


def test_time_cells_decline_what_parse_time_rejects():
    assert time_cells(pa.array(["2024-01-01", "nan"]), "auto") is None
    assert time_cells(pa.array(["1", "1e999"]), "unix") is None
    assert time_cells(pa.array(["2024-01-01", "soon"]), "auto") is None
    assert time_cells(pa.array(["1", None]), "auto") is None
    assert time_cells(pa.array(["13:45"]), "%H:%M").to_pylist() == [parse_time("13:45", "%H:%M")]
    assert strftime_cells(pa.array(["Jan 1"]), "%b %d") is None  # a name directive: strptime


# --- objects and refused files ---------------------------------------------------------

def test_s3_object_byte_ranges_and_parquet_row_groups_match_read(host, s3_bucket, tmp_path):
    lines = "".join(f"2024-02-{1 + i // 100:02d}T{i % 24:02d}:00Z,s{i % 2},{i / 7!r}\n"
                    for i in range(600))
    local = _csv(tmp_path, "obj.csv", "timestamp,id,v\n" + lines)
    url = s3_bucket.put("data/obj.csv", local.read_bytes())
    src = host.make("source", "timeseries.csv", {"paths": [url], "series_column": "id",
                                                  "target_columns": ["v"], "chunk_mb": 0.004})
    assert len(src.shards()) > 3
    assert len(_check_all(src)) == 600
    path = tmp_path / "obj.parquet"
    pq.write_table(pa.table({"ts": [1.0, 2.0, 3.0], "y": [1.5, None, 2.5]}), path, row_group_size=2)
    url = s3_bucket.put("data/obj.parquet", path.read_bytes())
    src = host.make("source", "timeseries.parquet", {"paths": [url], "time_column": "ts",
                                                      "target_columns": ["y"]})
    assert [r["y"] for r in _check_all(src)] == [1.5, None, 2.5]


def test_a_symlink_out_of_the_folder_declines_like_read_refuses_it(host, tmp_path):
    outside = _csv(tmp_path, "secret.csv", "timestamp,v\n2024-01-01,1\n")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "link.csv").symlink_to(outside)
    src = host.make("source", "timeseries.csv", {"paths": [str(folder)], "target_columns": ["v"]})
    [shard] = src.shards()
    assert [r.reason for r in src.read(shard)] == ["outside_root"]
    assert src.read_table(shard) is None


def test_parquet_wide_layout_and_integer_categories(host, tmp_path):
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({
        "day": pa.array([dt.date(2024, 1, d) for d in (1, 2, 3)], pa.date32()),
        "north": [1.0, None, 3.0], "south": pa.array([4, 5, None], pa.int16()),
        "zone": pa.array([7, None, 9], pa.int64())}), path)
    src = host.make("source", "timeseries.parquet", {
        "paths": [str(path)], "layout": "wide", "time_column": "day",
        "categorical_columns": ["zone"]})
    records = _check_all(src)
    assert [(r["series"], r["value"], r["zone"]) for r in records] == [
        ("north", 1.0, "7"), ("south", 4.0, "7"), ("north", None, None), ("south", 5.0, None),
        ("north", 3.0, "9"), ("south", None, "9")]


def test_the_long_line_check_agrees_with_measuring_every_line():
    from privet_timeseries.csv_cells import _has_long_line

    rng = random.Random(11)
    for _ in range(400):
        limit = rng.choice([2, 3, 8, 9, 64, 101])
        lengths = [rng.choice([0, 1, limit // 2, limit - 2, limit - 1, limit, limit + 1, rng.randint(0, 3 * limit)])
                   for _ in range(rng.randint(1, 12))]
        data = b"".join(b"x" * n + b"\n" for n in lengths)
        if rng.random() < 0.3:
            data = data[: rng.randint(0, len(data))]  # no newline at the end
        longest = max((len(line) + 1 for line in data.split(b"\n")[:-1]), default=0)
        longest = max(longest, len(data.split(b"\n")[-1]))
        assert _has_long_line(data, limit) == (longest >= limit), (limit, data)
