"""``image.folder`` with ``root: s3://bucket/prefix/`` and ``image.manifest`` with an
``s3://`` manifest give the records of the same files on local disk: class subfolders,
hidden files, bad files, ``..`` rows that climb out of the prefix, missing objects, and
one line (exit 2) for a missing bucket.

A real S3 API on loopback: moto's server on 127.0.0.1, fake credentials; skipped when
``moto[server]`` is not installed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from privet import BadRecord, DataError, PrivetError


@pytest.fixture
def bucket(s3_bucket):
    """A fresh bucket on ``privet.testing``'s loopback S3 server (moto)."""
    return s3_bucket


def _tree(root: Path, images: Any) -> Path:
    """Tiny PNG/JPEG files in class folders, plus the awkward files a folder holds."""
    files = {
        "cat/a.png": images.png(8, 8, seed=1), "cat/b.jpg": images.jpeg(8, 8, seed=2),
        "dog/c.png": images.png(8, 8, seed=3), "dog/puppies/d.jpeg": images.jpeg(8, 8, seed=4),
        "dog/big.png": images.png(64, 64, seed=5),
        "stray.png": images.png(8, 8, seed=6), "dog/notes.txt": b"not an image",
        ".thumbs/x.png": images.png(8, 8, seed=7), "cat/.hidden.png": images.png(8, 8, seed=8),
        "manifest.csv": b"path,label,split\ncat/a.png,cat,train\ndog/puppies/d.jpeg,dog,val\n"
                        b"cat/gone.png,cat,train\n../secret/s.png,cat,train\n,dog,train\n"
                        b"dog/c.png,dog,later\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root.parent / "secret").mkdir()
    (root.parent / "secret" / "s.png").write_bytes(images.png(8, 8, seed=9))
    return root


def _plain(items: list[Any]) -> list[Any]:
    return [(i.reason, i.location) if isinstance(i, BadRecord) else i for i in items]


def _read(source: Any) -> list[Any]:
    return _plain([item for shard in source.shards() for item in source.read(shard)])


def test_folder_on_s3_gives_the_records_of_the_local_folder(host, bucket, tmp_path, images):
    local = _tree(tmp_path / "data" / "imgs", images)
    bucket.upload(local.parent, "data")
    options = {"files_per_shard": 3, "max_file_bytes": 2000}
    want = _read(host.make("source", "image.folder", {"root": str(local), **options}))
    assert [w["path"] for w in want if isinstance(w, dict)] == ["cat/a.png", "cat/b.jpg",
                                                               "dog/c.png", "dog/puppies/d.jpeg"]
    assert {w for w in want if isinstance(w, tuple)} == {
        ("file_too_large", "dog/big.png"), ("unsupported_extension", "dog/notes.txt"),
        ("no_class_folder", "manifest.csv"), ("no_class_folder", "stray.png")}

    remote = host.make("source", "image.folder", {"root": bucket.url("data/imgs") + "/", **options})
    assert _read(remote) == want
    assert remote.files()[0] == bucket.url("data/imgs/cat/a.png")  # fingerprinted by ETag


def test_manifest_on_s3_reads_its_objects_and_refuses_rows_leaving_the_prefix(host, bucket, tmp_path, images):
    local = _tree(tmp_path / "data" / "imgs", images)
    bucket.upload(local.parent, "data")  # data/secret/s.png exists, outside data/imgs/
    want = _read(host.make("source", "image.manifest", {"path": str(local / "manifest.csv")}))
    remote = host.make("source", "image.manifest", {"path": bucket.url("data/imgs/manifest.csv")})
    got = _read(remote)
    assert got == want
    assert [g["path"] for g in got if isinstance(g, dict)] == ["cat/a.png", "dog/puppies/d.jpeg"]
    assert [g for g in got if isinstance(g, tuple)] == [
        ("missing_file", "manifest.csv:4"), ("outside_root", "manifest.csv:5"),
        ("missing_path", "manifest.csv:6"), ("bad_split", "manifest.csv:7")]
    assert remote.files() == [bucket.url("data/imgs/manifest.csv"), bucket.url("data/imgs/cat/a.png"),
                              bucket.url("data/imgs/dog/puppies/d.jpeg"),
                              bucket.url("data/imgs/cat/gone.png"), bucket.url("data/imgs/dog/c.png")]
    rooted = host.make("source", "image.manifest", {"path": bucket.url("data/imgs/manifest.csv"),
                                                    "root": bucket.url("data")})
    assert ("missing_file", "manifest.csv:2") in _read(rooted)  # data/cat/a.png: not there


def test_an_empty_prefix_and_a_missing_bucket_fail_with_one_line(host, bucket, tmp_path, capsys):
    from privet.cli import main

    with pytest.raises(DataError, match="no files found"):
        host.make("source", "image.folder", {"root": bucket.url("nothing")}).shards()
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(PrivetError, match="the bucket does not exist"):
        host.make("source", "image.manifest", {"path": f"{missing}/m.csv"}).files()
    config = {"name": "img", "runs_dir": str(tmp_path / "runs"),
              "data": {"source": {"name": "image.folder", "options": {"root": f"{missing}/imgs/"}}},
              "model": {"name": "image.cnn"}, "train": {"epochs": 1, "progress": "none"}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "pipeline.yaml")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("privet: error: "), err
    assert err.strip().count("\n") == 0 and f"{missing}: the bucket does not exist" in err, err
