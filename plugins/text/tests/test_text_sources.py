"""text.jsonl, text.csv and text.files: field mapping, bad input with reasons and lines, streaming."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest

from privet import BadRecord, ConfigError


def read_all(source):
    return [item for shard in source.shards() for item in source.read(shard)]


def bad(items):
    return [(b.reason, b.location) for b in items if isinstance(b, BadRecord)]


def good(items):
    return [r for r in items if not isinstance(r, BadRecord)]


def test_jsonl_maps_fields_and_stringifies_labels(host, tmp_path, corpora):
    corpora.jsonl(tmp_path / "a.jsonl", [
        {"body": "first text", "y": 1, "id": 7},
        {"body": "second text", "y": "neg", "id": 8},
        {"body": "third text", "id": 9},
    ])
    source = host.make("source", "text.jsonl", {
        "paths": [str(tmp_path / "a.jsonl")], "text_field": "body", "label_field": "y",
        "keep_fields": ["id"]})
    assert read_all(source) == [
        {"text": "first text", "label": "1", "id": 7},
        {"text": "second text", "label": "neg", "id": 8},
        {"text": "third text", "label": None, "id": 9},
    ]


def test_jsonl_without_label_field_emits_text_only(host, tmp_path, corpora):
    corpora.jsonl(tmp_path / "a.jsonl", [{"text": "hello", "label": "x"}])
    source = host.make("source", "text.jsonl", {"paths": [str(tmp_path / "a.jsonl")], "label_field": None})
    assert read_all(source) == [{"text": "hello"}]


def test_jsonl_drops_bad_lines_with_reason_and_line_number(host, tmp_path):
    lines = [
        b'{"text": "ok one", "label": "a"}',
        b'{"text": "broken',                       # 2: malformed JSON
        b'{"text": "caf\xe9 latin-1"}',            # 3: not UTF-8
        b'["not", "an", "object"]',                # 4
        b'{"text": "   "}',                        # 5: empty text
        b'{"label": "a"}',                         # 6: no text field
        b'{"text": 42}',                           # 7: text not a string
        b'',                                       # 8: blank line: skipped silently
        b'{"text": "ok two", "label": {"x": 1}}',  # 9: label not a scalar
        b'{"text": "ok three", "label": "b"}',
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    items = read_all(host.make("source", "text.jsonl", {"paths": [str(tmp_path / "d.jsonl")]}))
    assert bad(items) == [
        ("malformed_json", "d.jsonl:2"), ("invalid_utf8", "d.jsonl:3"), ("not_an_object", "d.jsonl:4"),
        ("empty_text", "d.jsonl:5"), ("missing_text", "d.jsonl:6"), ("text_not_a_string", "d.jsonl:7"),
        ("bad_label", "d.jsonl:9"),
    ]
    assert good(items) == [{"text": "ok one", "label": "a"}, {"text": "ok three", "label": "b"}]


def test_jsonl_chunk_mb_cuts_big_files_into_byte_ranges_with_the_same_records(host, tmp_path):
    path = tmp_path / "big.jsonl"
    rows = [json.dumps({"text": f"record {i} " + "word " * (i % 50), "label": str(i % 3)})
            for i in range(3000)]
    rows[1500] = '{"text": "broken'
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    whole = host.make("source", "text.jsonl", {"paths": [str(path)]})
    cut = host.make("source", "text.jsonl", {"paths": [str(path)], "chunk_mb": 0.1})

    assert len(whole.shards()) == 1 and len(cut.shards()) == 5  # a 0.5 MB file in 0.1 MiB ranges
    assert good(read_all(cut)) == good(read_all(whole)) and len(good(read_all(cut))) == 2999
    offset = sum(len(r) + 1 for r in rows[:1500])
    assert bad(read_all(cut)) == [("malformed_json", f"big.jsonl@{offset}")]
    assert bad(read_all(whole)) == [("malformed_json", "big.jsonl:1501")]


def test_jsonl_reads_gzip_and_folders(host, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "zipped 中文"}) + "\n")
    (folder / "a.jsonl").write_text(json.dumps({"text": "plain"}) + "\n", encoding="utf-8")
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    source = host.make("source", "text.jsonl", {"paths": [str(folder)], "label_field": None})
    assert [s.path.rsplit("/", 1)[1] for s in source.shards()] == ["a.jsonl", "b.jsonl.gz"]
    assert read_all(source) == [{"text": "plain"}, {"text": "zipped 中文"}]


def test_jsonl_streams_a_big_file_without_reading_it_into_memory(host, tmp_path):
    path = tmp_path / "big.jsonl"
    row = json.dumps({"text": "x" * 1000, "label": "a"}) + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(20_000):  # about 20 MB
            fh.write(row)
    source = host.make("source", "text.jsonl", {"paths": [str(path)]})
    tracemalloc.start()
    try:
        count = sum(1 for shard in source.shards() for _ in source.read(shard))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 2_000_000, f"peak {peak} bytes while streaming a 20 MB file"


def test_jsonl_missing_path_is_a_config_error(host, tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        host.make("source", "text.jsonl", {"paths": [str(tmp_path / "nope.jsonl")]})


def test_csv_reads_quoted_multiline_cells_and_drops_bad_rows_with_lines(host, tmp_path):
    content = (
        b'id,review,stars\n'
        b'1,"good, really good",5\n'
        b'2,"two\nlines",4\n'                # a quoted cell spanning lines 3-4
        b'3,"bad \xff byte",1\n'             # line 5: not UTF-8
        b'4,too,many,cells\n'                # line 6
        b'5,,3\n'                            # line 7: empty text
        b'6,"last one",2\n'
    )
    (tmp_path / "r.csv").write_bytes(content)
    source = host.make("source", "text.csv", {"paths": [str(tmp_path / "r.csv")],
                                              "text_field": "review", "label_field": "stars"})
    items = read_all(source)
    assert bad(items) == [("invalid_utf8", "r.csv:5"), ("wrong_column_count", "r.csv:6"),
                          ("empty_text", "r.csv:7")]
    assert good(items) == [{"text": "good, really good", "label": "5"},
                           {"text": "two\nlines", "label": "4"},
                           {"text": "last one", "label": "2"}]


def test_csv_without_the_text_column_says_which_columns_exist(host, tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    items = read_all(host.make("source", "text.csv", {"paths": [str(tmp_path / "r.csv")]}))
    assert len(items) == 1 and items[0].reason == "missing_column"
    assert "['a', 'b']" in items[0].detail


def test_tsv_with_tab_delimiter(host, tmp_path):
    (tmp_path / "r.tsv").write_text("text\tlabel\nhello there\tx\n", encoding="utf-8")
    source = host.make("source", "text.csv", {"paths": [str(tmp_path / "r.tsv")], "delimiter": "\t"})
    assert read_all(source) == [{"text": "hello there", "label": "x"}]


def test_files_takes_labels_from_subfolders_and_drops_bad_files(host, tmp_path):
    root = tmp_path / "docs"
    for label, name, data in [("pos", "a.txt", "\ufeffnice film".encode()), ("neg", "b.txt", b"bad film"),
                              ("neg", "c.txt", b"\xff\xfe broken"), ("pos", "d.txt", b"  \n"),
                              ("pos", "e.txt", b"x" * 200)]:
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_bytes(data)
    (root / "loose.txt").write_bytes(b"no label here")
    source = host.make("source", "text.files", {"path": str(root), "max_bytes": 100})
    items = read_all(source)
    assert sorted(bad(items)) == [("empty_text", "pos/d.txt"), ("file_too_large", "pos/e.txt"),
                                  ("invalid_utf8", "neg/c.txt")]
    assert sorted(good(items), key=lambda r: r["text"]) == [
        {"text": "bad film", "label": "neg"}, {"text": "nice film", "label": "pos"},
        {"text": "no label here", "label": None}]
    assert len(source.files()) == 6  # every file counts for the cache fingerprint


def test_files_without_labels(host, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("text", encoding="utf-8")
    source = host.make("source", "text.files", {"path": str(tmp_path), "labels_from": None})
    assert read_all(source) == [{"text": "text"}]


def test_files_path_must_be_a_folder(host, tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a folder"):
        host.make("source", "text.files", {"path": str(tmp_path / "a.txt")})


def test_a_bad_csv_header_gets_the_answer_every_privet_reader_gives(host, tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"te\xffxt,label\nhello,a\n")

    items = read_all(host.make("source", "text.csv", {"paths": [str(path)]}))

    assert bad(items) == [("bad_csv_header", "r.csv:1")] and not good(items)


def test_records_are_located_by_line_for_the_engine(host, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    source = host.make("source", "text.jsonl", {"paths": [str(path)], "label_field": None})

    located = [where for shard in source.shards() for where, _item in source.read_located(shard)]

    assert located == ["d.jsonl:1", "d.jsonl:3"]
