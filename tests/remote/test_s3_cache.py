"""``data.cache_dir``: the prepared cache on local disk while data and checkpoints are on
the store, keyed by the objects' ETags and sizes (never by reading them whole)."""

from __future__ import annotations

import json

import pytest

from remote_support import corpus, pipeline


def _run(path, capsys) -> str:
    from privet.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "-s", "train.epochs=1"])
    err = capsys.readouterr().err
    assert info.value.code == 0, err
    return err


def test_the_cache_stays_local_keyed_by_etag_and_size(s3, tmp_path, capsys, monkeypatch):
    from privet import objectstore

    s3.put("data/part-0.jsonl", corpus(96))
    cache_dir = tmp_path / "nvme" / "cache"
    path = pipeline(tmp_path, data=s3.url("data"), runs=s3.url("runs"), every=100,
                    data_cache_dir=str(cache_dir))
    reads = []
    real = objectstore.RangeReader.__init__

    def counting(self, url, start=0, end=None):
        reads.append(url)
        real(self, url, start, end)

    monkeypatch.setattr(objectstore.RangeReader, "__init__", counting)

    _run(path, capsys)
    (first,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    meta = json.loads((first / "meta.json").read_text())
    assert meta["files"] == [{"path": s3.url("data/part-0.jsonl"), "size": len(corpus(96)),
                              "etag": objectstore.info(s3.url("data/part-0.jsonl"))[1]}]
    assert not any(".cache" in k or k.endswith(".arrow") for k in s3.keys()), s3.keys()
    assert any(k.endswith("/state.json") for k in s3.keys("runs/")), "checkpoints on the store"

    reads.clear()
    err = _run(path, capsys)  # same objects: the cache is reused without reading the data
    assert "reusing prepared cache" in err and reads == [], reads

    s3.put("data/part-0.jsonl", corpus(96, seed=9))  # same size, new content: a new ETag
    _run(path, capsys)
    assert len([p for p in cache_dir.iterdir() if not p.name.startswith(".")]) == 2


def test_cache_list_of_a_store_runs_dir_shows_the_local_staging_caches(s3, tmp_path, capsys):
    from click.testing import CliRunner

    from privet.cli import cli

    s3.put("data/part-0.jsonl", corpus(48))
    _run(pipeline(tmp_path, data=s3.url("data"), runs=s3.url("runs"), every=100), capsys)
    listed = CliRunner().invoke(cli, ["cache", "list", "--runs-dir", s3.url("runs"), "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert entry["size"] > 0 and entry["sources"] == [s3.url("data/part-0.jsonl")]
    assert not any(".cache" in k for k in s3.keys()), "the cache never goes to the bucket"
