"""The object-store layer on its own: URLs, byte ranges, retries, and the mirror's order
(markers last on upload, first on delete)."""

from __future__ import annotations

import json

import pytest

from remote_support import corpus


def test_urls_keep_their_meaning_through_pathlib():
    from pathlib import Path

    from privet.objectstore import ObjectStoreError, is_remote, join, split, url_of

    folded = Path("s3://bucket/runs/a/")  # what a Path option makes of a URL
    assert is_remote(folded) and url_of(folded) == "s3://bucket/runs/a"
    assert split("s3://bucket/runs/a") == ("bucket", "runs/a") and split("s3://bucket") == ("bucket", "")
    assert join("s3://bucket/runs", "a/", "/b") == "s3://bucket/runs/a/b"
    assert not is_remote("/data/s3:/x") and not is_remote("runs")
    with pytest.raises(ObjectStoreError, match="no bucket"):
        split("s3://")


@pytest.mark.parametrize("chunk", [1, 37, 1000, 1 << 20])
def test_byte_ranges_cover_every_line_once(s3, tmp_path, chunk):
    from privet.io import byte_ranges, read_jsonl

    data = corpus(40) + b"\n" + b'{"broken": \n' + corpus(3, seed=2)
    local = tmp_path / "data.jsonl"
    local.write_bytes(data)
    url = s3.put("data.jsonl", data)
    def plain(items):  # a bad line's location differs: file:line whole, file@offset in a range
        return [r if isinstance(r, dict) else r.reason for _w, r in items]

    whole = plain(read_jsonl(local))
    assert "malformed_json" in whole and len(whole) == 44
    for path in [str(local)] + ([url] if chunk >= 1000 else []):  # each range is a request
        ranges = byte_ranges(path, chunk)
        assert len(ranges) == (1 if chunk >= len(data) else -(-len(data) // chunk))
        got = plain(item for a, b in ranges for item in read_jsonl(path, start=a, end=b))
        assert got == whole, path
    bad = [w for a, b in byte_ranges(url, 1000) for w, r in read_jsonl(url, start=a, end=b)
           if not isinstance(r, dict)]
    offset = data.index(b'{"broken')
    assert bad == [f"data.jsonl@{offset}"]


def test_the_jsonl_source_streams_one_object_as_several_shards(s3, privet_host):
    from privet.io import read_jsonl

    data = corpus(300)
    url = s3.put("big/part.jsonl", data)
    source = privet_host.make("source", "jsonl", {"paths": [s3.url("big")], "chunk_mb": 0.01})
    shards = source.shards()
    assert len(shards) == -(-len(data) // int(0.01 * (1 << 20))) and shards[0].path == url
    records = [r for shard in shards for r in source.read(shard)]
    assert records == [r for _w, r in read_jsonl(url)] and len(records) == 300


def test_network_errors_are_retried_with_backoff_then_reported(monkeypatch):
    from privet import objectstore

    objectstore.configure({"retries": 3, "backoff_s": 0.01})
    waits: list[float] = []
    monkeypatch.setattr(objectstore.time, "sleep", waits.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7")
        return "ok"

    def refused():
        raise OSError("curlCode: 7, Could not connect to server")

    def denied():
        raise OSError("AWS Error ACCESS_DENIED during PutObject operation: Access Denied")

    try:
        assert objectstore.retrying("write", "s3://b/k", flaky) == "ok"
        assert waits == [0.01, 0.02]
        calls.clear()
        with pytest.raises(objectstore.ObjectStoreError, match="gave up after 4 attempts"):
            objectstore.retrying("write", "s3://b/k", refused)
        assert waits[2:] == [0.01, 0.02, 0.04]
        waits.clear()
        with pytest.raises(objectstore.ObjectStoreError, match="access denied"):
            objectstore.retrying("write", "s3://b/k", denied)
        assert waits == [], "a refusal is not retried"
    finally:
        objectstore.configure(None)


def test_an_endpoint_holding_credentials_is_refused_without_echoing_them():
    from privet.config import load_config
    from privet.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(data={"data": {"source": "x"}, "model": "m",
                          "storage": {"endpoint": "https://AKIAXX:topsecret@rgw.example.com"}})
    assert "storage.endpoint" in str(info.value) and "topsecret" not in str(info.value)


def test_the_mirror_uploads_markers_last_deletes_them_first_and_keeps_temp_names_local(
        s3, tmp_path, monkeypatch):
    from privet import objectstore
    from privet.storage import Storage, mirror

    log: list[tuple[str, str]] = []
    put, delete = objectstore.put_bytes, objectstore.delete
    monkeypatch.setattr(objectstore, "put_bytes", lambda u, d: (log.append(("put", u)), put(u, d)))
    monkeypatch.setattr(objectstore, "delete", lambda u: (log.append(("delete", u)), delete(u)))
    root = tmp_path / "run"
    mirror(root, s3.url("runs/a"))
    try:
        storage = Storage(root)
        storage.write_json("config.json", {"a": 1})
        with storage.atomic_dir("checkpoints/step-1") as tmp:
            out = Storage(tmp)
            out.write_bytes("state.json", b"{}")  # written first, uploaded last
            out.write_bytes("model.safetensors", b"w")
            out.write_bytes("z.bin", b"z")
        puts = [u.rsplit("runs/a/", 1)[1] for op, u in log if op == "put"]
        assert puts == ["config.json", "checkpoints/step-1/model.safetensors",
                        "checkpoints/step-1/z.bin", "checkpoints/step-1/state.json"]
        assert json.loads(s3.get("runs/a/config.json")) == {"a": 1}
        log.clear()
        with storage.atomic_dir("checkpoints/step-1") as tmp:  # written again, without z.bin
            Storage(tmp).write_bytes("state.json", b'{"again": 1}')
            Storage(tmp).write_bytes("model.safetensors", b"w2")
        ops = [(op, u.rsplit("/", 1)[1]) for op, u in log]
        assert ops == [("delete", "state.json"), ("put", "model.safetensors"),
                       ("put", "state.json"), ("delete", "z.bin")], ops
        assert s3.keys("runs/a/checkpoints/") == ["runs/a/checkpoints/step-1/model.safetensors",
                                                  "runs/a/checkpoints/step-1/state.json"]
        log.clear()
        storage.remove("checkpoints/step-1")
        deletes = [u.rsplit("/", 1)[1] for op, u in log if op == "delete"]
        assert deletes[:1] == ["state.json"]
        assert s3.keys("runs/a/checkpoints/") == []
        assert not any(".tmp-" in k for k in s3.keys())
    finally:
        mirror(root, None)


def test_an_object_name_that_would_leave_the_working_copy_is_refused(s3, tmp_path):
    from privet.objectstore import ObjectStoreError, download_tree

    s3.put("runs/evil/config.yaml", b"name: evil\n")
    s3.put("runs/evil/state/../../../escaped.txt", b"PWNED")
    with pytest.raises(ObjectStoreError, match="refused object name"):
        download_tree(s3.url("runs/evil"), tmp_path / "copy")
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))
