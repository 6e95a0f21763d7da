"""The text sources on ``s3://``: ``text.jsonl``/``text.csv`` through ``privet.io`` and
``text.files`` on a prefix give the records of the same files on local disk; a missing
bucket or object is one clear error.

A real S3 API on loopback: moto's server on 127.0.0.1, fake credentials; skipped when
``moto[server]`` is not installed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from privet import BadRecord, DataError, PrivetError


@pytest.fixture
def bucket(s3_bucket):
    """A fresh bucket on ``privet.testing``'s loopback S3 server (moto)."""
    return s3_bucket


def _read(source: Any) -> list[Any]:
    items = [item for shard in source.shards() for item in source.read(shard)]
    return [(i.reason, i.location) if isinstance(i, BadRecord) else i for i in items]


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_text_files_on_a_prefix_give_the_local_records(host, bucket, tmp_path):
    local = _write(tmp_path / "corpus", {
        "pos/a.txt": b"nice film", "neg/b.txt": b"bad film", "neg/c.txt": b"\xff\xfe bad",
        "pos/d.txt": b"   ", "pos/e.txt": b"x" * 200, "pos/deep/f.txt": b"deep and nice",
        "loose.txt": b"no label here", "neg/notes.md": b"not matched",
        ".cache/g.txt": b"hidden: never read"})
    bucket.upload(tmp_path, "data")
    wants = {}
    for pattern in ("**/*.txt", "*/*.txt"):
        options = {"max_bytes": 100, "pattern": pattern}
        want = _read(host.make("source", "text.files", {"path": str(local), **options}))
        want = wants[pattern] = [w for w in want if not (isinstance(w, dict) and "hidden" in w["text"])]
        remote = host.make("source", "text.files", {"path": bucket.url("data/corpus") + "/", **options})
        assert _read(remote) == want, pattern
    deep, loose = {"text": "deep and nice", "label": "pos"}, {"text": "no label here", "label": None}
    assert deep in wants["**/*.txt"] and loose in wants["**/*.txt"]
    assert deep not in wants["*/*.txt"] and loose not in wants["*/*.txt"]
    assert ("invalid_utf8", "neg/c.txt") in want and ("file_too_large", "pos/e.txt") in want
    assert remote.files()[0] == bucket.url("data/corpus/neg/b.txt")


def test_jsonl_and_csv_objects_read_through_privet_io(host, bucket, tmp_path):
    rows = [{"text": f"line {i}", "label": i % 2} for i in range(20)] + [{"label": 1}]
    jsonl = tmp_path / "part.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    (tmp_path / "part.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(15)))
    bucket.upload(tmp_path, "docs")
    for name, path in (("text.jsonl", "part.jsonl"), ("text.csv", "part.csv")):
        want = _read(host.make("source", name, {"paths": [str(tmp_path / path)]}))
        assert _read(host.make("source", name, {"paths": [bucket.url("docs")]})) == want
    assert want[-1] == {"text": "row 14", "label": "2"}


def test_a_missing_bucket_or_object_is_one_clear_error(host, bucket):
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(PrivetError, match="the bucket does not exist") as info:
        host.make("source", "text.files", {"path": f"{missing}/corpus"}).shards()
    assert "\n" not in str(info.value)
    with pytest.raises(PrivetError, match="the bucket does not exist"):
        host.make("source", "text.jsonl", {"paths": [f"{missing}/a.jsonl"]}).files()
    with pytest.raises(DataError, match="no object matching"):
        host.make("source", "text.jsonl", {"paths": [bucket.url("nope.jsonl")]}).files()
