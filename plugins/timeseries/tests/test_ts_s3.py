"""The CSV and Parquet sources read ``s3://`` objects and prefixes: the same records as the
local file, byte ranges streamed by ranged GETs, a cache keyed by ETag and size, and one
line (exit 2) for a missing bucket or object.

A real S3 API on loopback: moto's server on 127.0.0.1, fake credentials; skipped when
``moto[server]`` is not installed.
"""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from privet import BadRecord, DataError, PrivetError
from privet_timeseries.synthetic import seasonal_rows, tabular_rows, write_csv


@pytest.fixture
def bucket(s3_bucket):
    """A fresh bucket on ``privet.testing``'s loopback S3 server (moto)."""
    return s3_bucket


def _series_csv(tmp_path: Path) -> Path:
    """Two series with a few broken rows spread over the file (so over several ranges)."""
    rows = seasonal_rows(240, n_series=2, seed=3)
    rows[57]["timestamp"] = "yesterday"
    rows[301]["value"] = "lots"
    return write_csv(tmp_path / "series.csv", rows)


def _located(records: list[Any]) -> list[Any]:
    return [(r.reason, r.location) if isinstance(r, BadRecord) else r for r in records]


def test_csv_object_byte_ranges_and_prefix_give_the_local_records(host, bucket, tmp_path, read):
    local = _series_csv(tmp_path)
    url = bucket.put("data/series.csv", local.read_bytes())
    bucket.put("data/notes.txt", b"not a csv")  # the prefix lists only the patterns
    options = {"series_column": "series", "target_columns": ["value"], "chunk_mb": 0.004}
    want = _located(read(host.make("source", "timeseries.csv", {"paths": [str(local)], **options})))
    assert ("unparseable_timestamp", "series.csv:59") in want
    assert ("unparseable_number", "series.csv:303") in want

    remote = host.make("source", "timeseries.csv", {"paths": [url], **options})
    assert len(remote.shards()) > 3 and {s.path for s in remote.shards()} == {url}
    assert _located(read(remote)) == want
    folder = host.make("source", "timeseries.csv", {"paths": [bucket.url("data") + "/"], **options})
    assert folder.files() == [url]
    assert _located(read(folder)) == want


def test_gzipped_csv_object_reads_like_the_local_file(host, bucket, tmp_path, read):
    local = _series_csv(tmp_path)
    packed = tmp_path / "series.csv.gz"
    packed.write_bytes(gzip.compress(local.read_bytes()))
    url = bucket.put("series.csv.gz", packed.read_bytes())
    options = {"series_column": "series", "target_columns": ["value"], "chunk_mb": 0.004}
    want = read(host.make("source", "timeseries.csv", {"paths": [str(packed)], **options}))
    remote = host.make("source", "timeseries.csv", {"paths": [url], **options})
    assert len(remote.shards()) == 1  # compressed: one shard
    assert _located(read(remote)) == _located(want)


def test_parquet_object_row_groups_give_the_local_records(host, bucket, tmp_path, read):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = seasonal_rows(50, n_series=2, seed=1)
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    local = tmp_path / "series.parquet"
    pq.write_table(table, local, row_group_size=16)
    bucket.put("pq/a.parquet", local.read_bytes())
    options = {"series_column": "series", "target_columns": ["value"]}
    want = read(host.make("source", "timeseries.parquet", {"paths": [str(local)], **options}))
    remote = host.make("source", "timeseries.parquet", {"paths": [bucket.url("pq")], **options})
    assert len(remote.shards()) == 7
    assert read(remote) == want and len(want) == 100


def test_a_pipeline_on_s3_prepares_the_local_cache_keyed_by_etag(host, bucket, tmp_path, run_pipeline):
    from privet import objectstore

    local = write_csv(tmp_path / "table.csv", tabular_rows(160, seed=2))
    url = bucket.put("tables/table.csv", local.read_bytes())

    def run(path: str) -> Any:
        out = run_pipeline({
            "name": "mlp", "seed": 0,
            "data": {"source": {"name": "timeseries.csv", "options": {
                "paths": [path], "time_column": None, "target_columns": ["label"],
                "categorical_columns": ["color", "size", "label"]}},
                "cleaners": [{"name": "timeseries.impute", "options": {"method": "median"}},
                             {"name": "timeseries.categorical", "options": {"columns": ["color", "size"]}}],
                "split": {"method": "random", "val": 0.25}},
            "model": {"name": "timeseries.mlp", "options": {"hidden": [8]}},
            "train": {"epochs": 1, "batch_size": 64, "progress": "none"},
            "export": {"formats": []},
        })
        out.assert_success()
        cache = Path(out.report["data"]["cache"])
        return {**json.loads((cache / "meta.json").read_text()), "cache": str(cache)}

    here, there = run(str(local)), run(url)
    assert there["files"] == [{"path": url, "size": local.stat().st_size,
                               "etag": objectstore.info(url)[1]}]
    assert there["files"][0]["etag"]
    for key in ("counts", "dropped", "cleaners", "cleaner_states", "model_state"):
        assert there[key] == here[key], key
    for split, names in here["record_files"].items():  # the prepared records, byte for byte
        assert [(Path(here["cache"]) / n).read_bytes() for n in names] == \
               [(Path(there["cache"]) / n).read_bytes() for n in there["record_files"][split]]


def _cli(tmp_path: Path, paths: list[str], capsys: Any) -> tuple[int, str]:
    from privet.cli import main

    config = {"name": "ts", "runs_dir": str(tmp_path / "runs"),
              "data": {"source": {"name": "timeseries.csv", "options": {
                  "paths": paths, "series_column": "series", "target_columns": ["value"]}}},
              "model": {"name": "timeseries.mlp"}, "train": {"epochs": 1, "progress": "none"}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path)])
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("where", ["bucket", "key"])
def test_a_missing_bucket_or_object_is_one_line_exit_2(host, bucket, tmp_path, capsys, where):
    url = (f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/series.csv" if where == "bucket"
           else bucket.url("nothing/here.csv"))
    code, err = _cli(tmp_path, [url], capsys)
    assert code == 2 and err.startswith("privet: error: "), err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert ("the bucket does not exist" if where == "bucket" else "no object matching") in err, err
    with pytest.raises(DataError if where == "key" else PrivetError):
        host.make("source", "timeseries.parquet", {"paths": [url.replace(".csv", ".parquet")],
                                                   "target_columns": ["value"]}).shards()
