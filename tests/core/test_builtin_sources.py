"""The core's generic sources: every line is a record or a BadRecord naming file and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import privet
from privet.io import iter_lines, read_records
from privet.errors import ConfigError


def _read(source) -> list:
    return [item for shard in source.shards() for item in source.read(shard)]


def test_jsonl_reads_objects_and_reports_bad_lines(privet_host, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n[1, 2]\n\xff\xfe\n{"a": 2}\n')

    items = _read(privet_host.make("source", "jsonl", {"paths": [str(path)]}))

    assert items[0] == {"a": 1} and items[-1] == {"a": 2}
    bad = [(b.reason, b.location) for b in items if isinstance(b, privet.BadRecord)]
    assert bad == [("malformed_json", "d.jsonl:3"), ("not_an_object", "d.jsonl:4"),
                   ("invalid_utf8", "d.jsonl:5")]


def test_jsonl_folder_and_gzip_files_are_shards(privet_host, tmp_path):
    (tmp_path / "b.jsonl").write_text('{"n": 2}\n')
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as fh:
        fh.write('{"n": 1}\n')
    (tmp_path / "notes.txt").write_text("not data\n")

    source = privet_host.make("source", "jsonl", {"paths": [str(tmp_path)]})

    assert [Path(s.path).name for s in source.shards()] == ["a.jsonl.gz", "b.jsonl"]
    assert _read(source) == [{"n": 1}, {"n": 2}]
    assert source.files() == sorted(str(tmp_path / n) for n in ("a.jsonl.gz", "b.jsonl"))


def test_csv_parses_numbers_and_empty_cells_and_reports_ragged_rows(privet_host, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("name,age,score\nann,31,0.5\nbob,,x\ncarl,40\n")

    items = _read(privet_host.make("source", "csv", {"paths": [str(path)]}))

    assert items[:2] == [{"name": "ann", "age": 31, "score": 0.5},
                         {"name": "bob", "age": None, "score": "x"}]
    assert items[2] == privet.BadRecord("wrong_column_count", "d.csv:4",
                                        "2 cells, header has 3")


def test_csv_can_keep_strings_and_use_another_delimiter(privet_host, tmp_path):
    path = tmp_path / "d.tsv.csv"
    path.write_text("id;v\n007;1.50\n")

    items = _read(privet_host.make("source", "csv", {"paths": [str(path)], "delimiter": ";",
                                                     "parse_numbers": False}))

    assert items == [{"id": "007", "v": "1.50"}]


def test_missing_source_file_is_a_config_error_naming_the_option(privet_host, tmp_path):
    with pytest.raises(ConfigError) as info:
        privet_host.make("source", "jsonl", {"paths": [str(tmp_path / "nope.jsonl")]})

    assert info.value.key_path == "jsonl.paths"
    assert info.value.message.startswith(f"file not found: {tmp_path / 'nope.jsonl'}")


def test_iter_lines_streams_with_line_numbers(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"one\n\xff\nthree")

    assert list(iter_lines(str(path))) == [(1, "one\n"), (2, None), (3, "three")]


@pytest.mark.parametrize("header", [b"na\xffme,age\n", b'"name,age\n', b"\n", b"name,name\n"],
                         ids=["not-utf8", "open-quote", "empty", "repeated"])
def test_a_bad_csv_header_is_one_bad_record_at_line_1_for_sources_and_predict(privet_host, tmp_path,
                                                                          header):
    path = tmp_path / "d.csv"
    path.write_bytes(header + b"ann,31\nbob,40\n")

    from_source = _read(privet_host.make("source", "csv", {"paths": [str(path)]}))
    from_predict = [item for _where, item in read_records(path)]

    for items in (from_source, from_predict):
        assert len(items) == 1, items
        assert (items[0].reason, items[0].location) == ("bad_csv_header", "d.csv:1")
        assert "file skipped" in items[0].detail


def test_csv_rows_are_located_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'id,text\n1,"two\nlines"\n2,\xff\n3,ok\n')

    got = [(where, item if isinstance(item, dict) else item.reason) for where, item in read_records(path)]

    assert got == [("d.csv:2", {"id": 1, "text": "two\nlines"}), ("d.csv:4", "invalid_utf8"),
                   ("d.csv:5", {"id": 3, "text": "ok"})]


def test_a_folder_source_does_not_read_a_symlink_out_of_its_folder(privet_host, tmp_path):
    secret = tmp_path / "private" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"text": "SECRET-MARKER"}\n')
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"n": 1}\n')
    (data / "b.jsonl").symlink_to(secret)

    source = privet_host.make("source", "jsonl", {"paths": [str(data)]})
    items = _read(source)

    assert items[0] == {"n": 1} and len(items) == 2
    assert (items[1].reason, items[1].location) == ("outside_root", "b.jsonl")
    assert "follow_symlinks: true" in items[1].detail
    assert source.files() == [str(data / "a.jsonl")], "the fingerprint never hashes it either"
    followed = privet_host.make("source", "jsonl", {"paths": [str(data)], "follow_symlinks": True})
    assert {"text": "SECRET-MARKER"} in _read(followed)
