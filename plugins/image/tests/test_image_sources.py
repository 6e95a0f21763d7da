"""image.folder and image.manifest: records of bytes + label + path, bad rows reported."""

from __future__ import annotations

import json

import pytest

import privet


def read_all(source):
    return [item for shard in source.shards() for item in source.read(shard)]


def test_folder_yields_file_bytes_with_the_class_folder_as_label(host, shapes_dir):
    source = host.make("source", "image.folder", {"root": str(shapes_dir)})
    records = read_all(source)
    assert len(records) == 36
    first = records[0]
    assert set(first) == {"image", "label", "path"}
    assert first["path"] == "circle/0000.png"
    assert first["label"] == "circle"
    assert first["image"] == (shapes_dir / "circle" / "0000.png").read_bytes()
    assert sorted({r["label"] for r in records}) == ["circle", "square", "triangle"]


def test_folder_shards_split_the_listing_without_losing_or_repeating_files(host, shapes_dir):
    source = host.make("source", "image.folder", {"root": str(shapes_dir), "files_per_shard": 5})
    shards = source.shards()
    assert len(shards) == 8  # 36 files / 5
    paths = [r["path"] for r in read_all(source)]
    assert len(paths) == len(set(paths)) == 36
    assert len(source.files()) == 36


def test_folder_reports_loose_files_and_other_suffixes_as_bad_records(host, shapes_dir):
    (shapes_dir / "stray.png").write_bytes(b"x")
    (shapes_dir / "circle" / "labels.txt").write_text("hi")
    (shapes_dir / "circle" / ".DS_Store").write_bytes(b"mac")
    (shapes_dir / "circle" / "nested").mkdir()
    (shapes_dir / "circle" / "nested" / "deep.PNG").write_bytes(b"y")
    items = read_all(host.make("source", "image.folder", {"root": str(shapes_dir)}))
    bad = {(b.reason, b.location) for b in items if isinstance(b, privet.BadRecord)}
    assert bad == {("no_class_folder", "stray.png"), ("unsupported_extension", "circle/labels.txt")}
    deep = [r for r in items if isinstance(r, dict) and r["path"] == "circle/nested/deep.PNG"]
    assert deep and deep[0]["label"] == "circle"
    assert not any(isinstance(r, dict) and r["path"].endswith(".DS_Store") for r in items)


def test_folder_reports_files_over_the_size_limit(host, shapes_dir):
    big = shapes_dir / "square" / "0000.png"
    items = read_all(host.make("source", "image.folder",
                               {"root": str(shapes_dir), "max_file_bytes": big.stat().st_size - 1}))
    bad = [b for b in items if isinstance(b, privet.BadRecord) and b.location == "square/0000.png"]
    assert len(bad) == 1 and bad[0].reason == "file_too_large"


def test_folder_root_that_does_not_exist_is_a_config_error(host, tmp_path):
    with pytest.raises(privet.ConfigError, match="root: file not found"):
        host.make("source", "image.folder", {"root": str(tmp_path / "nope")})


def test_csv_manifest_gives_records_with_split_and_names_bad_lines(host, shapes_dir):
    manifest = shapes_dir / "manifest.csv"
    manifest.write_text(
        "path,label,split\n"
        "circle/0000.png,circle,train\n"
        "square/0000.png,square,Validation\n"
        "triangle/0000.png,triangle,test\n"
        "circle/missing.png,circle,train\n"
        "circle/0001.png,,train\n"
        "circle/0002.png,circle,holdout\n"
        "circle/0003.png,circle\n")
    items = read_all(host.make("source", "image.manifest", {"path": str(manifest)}))
    good = [r for r in items if isinstance(r, dict)]
    assert [(r["path"], r["label"], r["split"]) for r in good] == [
        ("circle/0000.png", "circle", "train"),
        ("square/0000.png", "square", "val"),
        ("triangle/0000.png", "triangle", "test")]
    assert good[0]["image"] == (shapes_dir / "circle" / "0000.png").read_bytes()
    bad = [(b.reason, b.location) for b in items if isinstance(b, privet.BadRecord)]
    assert bad == [("missing_file", "manifest.csv:5"), ("missing_label", "manifest.csv:6"),
                   ("bad_split", "manifest.csv:7"), ("wrong_column_count", "manifest.csv:8")]


def test_jsonl_manifest_resolves_paths_against_root_and_stringifies_labels(host, shapes_dir, tmp_path):
    manifest = tmp_path / "list.jsonl"
    rows = [{"file": "circle/0000.png", "y": 0}, {"file": "square/0000.png", "y": 1}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    source = host.make("source", "image.manifest", {
        "path": str(manifest), "root": str(shapes_dir), "path_field": "file", "label_field": "y"})
    items = read_all(source)
    assert [(r["label"], r["path"]) for r in items[:2]] == [("0", "circle/0000.png"),
                                                            ("1", "square/0000.png")]
    assert "split" not in items[0]
    assert isinstance(items[2], privet.BadRecord) and items[2].reason == "malformed_json"
    assert items[2].location == "list.jsonl:3"
    assert str(shapes_dir / "square" / "0000.png") in source.files()


def test_manifest_with_an_unknown_suffix_asks_for_the_format(host, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("path,label\n")
    with pytest.raises(privet.ConfigError, match="set format: csv or format: jsonl"):
        host.make("source", "image.manifest", {"path": str(listing)})
    assert host.make("source", "image.manifest", {"path": str(listing), "format": "csv"})
