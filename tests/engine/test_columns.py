"""The columnar path: ``privet.Columns`` from the cache and ``Model.encode_columns`` in training."""

from __future__ import annotations

import numpy as np
import pytest

import privet
from engine_support import blobs_pipeline, checkpoints, read_weights, tinyplugin


@pytest.fixture
def table(tmp_path):
    """130 examples over 6 shard files: numbers, equal-length lists and bytes, text, ragged lists."""
    from privet.data.arrow import ArrowShardWriter, ArrowTable

    writer = ArrowShardWriter(tmp_path, "train", shard_rows=23)
    for i in range(130):
        writer.add({"id": i, "weight": i / 4, "x": [float(i), -float(i), i + 0.5],
                    "pixels": bytes([i % 256] * 4), "text": f"row {i}", "tokens": list(range(i % 5 + 1))})
    out = ArrowTable(writer.close())
    assert len(out.files) == 6
    return out


ORDER = [129, 0, 57, 22, 23, 100, 3, 3, 64]  # crosses every file boundary, one repeat


def test_numpy_gathers_fields_in_batch_order_across_files(table):
    batch = table.columns(ORDER)
    rows = table.rows(ORDER)
    assert len(batch) == len(ORDER)
    ids = batch.numpy("id")
    assert ids.dtype == np.int64 and ids.tolist() == ORDER
    assert batch.numpy("weight").tolist() == [r["weight"] for r in rows]
    x = batch.numpy("x", np.float32)
    assert x.dtype == np.float32 and x.shape == (len(ORDER), 3)
    assert np.array_equal(x, np.asarray([r["x"] for r in rows], dtype=np.float32))
    pixels = batch.numpy("pixels")
    assert pixels.dtype == np.uint8 and pixels.shape == (len(ORDER), 4)
    assert [bytes(p) for p in pixels] == [r["pixels"] for r in rows]
    x[0, 0] = 99.0  # a copy the model may write to, never the memory-mapped cache
    assert table.columns(ORDER).numpy("x")[0, 0] == 129.0


def test_arrow_gives_any_field_and_to_pylist_gives_the_records(table):
    batch = table.columns(ORDER)
    assert batch.arrow("text").to_pylist() == [f"row {i}" for i in ORDER]
    assert batch.arrow("tokens").to_pylist() == [list(range(i % 5 + 1)) for i in ORDER]
    assert batch.to_pylist() == table.rows(ORDER)


def test_fields_numpy_cannot_give_raise_a_data_error_naming_them(table):
    batch = table.columns(ORDER)
    with pytest.raises(privet.DataError, match=r"field 'tokens' is not .* Columns.arrow\('tokens'\)"):
        batch.numpy("tokens")  # lists of different lengths
    with pytest.raises(privet.DataError, match="field 'text' is not"):
        batch.numpy("text")
    with pytest.raises(privet.DataError, match=r"no field 'nope' \(fields: id, weight, x"):
        batch.numpy("nope")
    with pytest.raises(privet.DataError, match="no field 'nope'"):
        batch.arrow("nope")


def _train(run, model: str, **options):
    config = blobs_pipeline(epochs=2)
    config["model"] = {"name": model, "options": {"hidden": 16, **options}}
    outcome = run(config)
    outcome.assert_success()
    return outcome, read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")


def test_a_model_encoding_columns_trains_exactly_like_one_encoding_records(run, monkeypatch):
    import torch

    per_record, w_records = _train(run, "tiny.mlp")

    def no_records(self, record):
        raise AssertionError("encode() called: the columnar path was not taken")

    monkeypatch.setattr(tinyplugin.ColumnarMLP, "encode", no_records)
    columnar, w_columns = _train(run, "tiny.mlp_columns")
    for name, value in w_records.items():
        assert torch.equal(w_columns[name], value), name
    assert columnar.report["history"] == per_record.report["history"]
    assert columnar.report["steps"] == per_record.report["steps"]


def test_with_an_augmenter_the_engine_encodes_record_by_record(run):
    import torch

    config = blobs_pipeline(epochs=1)
    config["data"]["augmenters"] = [{"name": "kit.jitter", "options": {"sigma": 0.2}}]
    weights = {}
    for model in ("tiny.mlp", "tiny.mlp_columns"):
        config["model"] = {"name": model, "options": {"hidden": 16}}
        outcome = run(config)
        outcome.assert_success()
        weights[model] = read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")
    # the augmenter ran for both (the columnar model got augmented records, not the cache)
    for name, value in weights["tiny.mlp"].items():
        assert torch.equal(weights["tiny.mlp_columns"][name], value), name


def test_drop_record_from_encode_columns_falls_back_to_records_and_counts_each_drop(run):
    outcome, _ = _train(run, "tiny.mlp_columns", drop_label=1)
    report = outcome.report
    train_labels = _train_labels(outcome.run_dir)
    expected = 2 * sum(1 for label in train_labels if label == 1)  # two epochs
    assert expected > 0
    assert report["data"]["dropped_in_training"] == {"undecodable": expected}
    assert report["status"] == "completed"


def _train_labels(run_dir) -> list[int]:
    import json

    from privet.data.arrow import ArrowTable

    cache = run_dir / "cache"
    meta = json.loads((cache / "meta.json").read_text())
    table = ArrowTable([str(cache / f) for f in meta["example_files"]["train"]])
    return table.column("label")



def test_columnar_batches_come_the_same_from_worker_processes(run):
    import torch

    weights = []
    for workers in (0, 2):
        config = blobs_pipeline(epochs=1)
        config["model"] = {"name": "tiny.mlp_columns", "options": {"hidden": 16}}
        config["data"]["num_workers"] = workers
        outcome = run(config)
        outcome.assert_success()
        weights.append(read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors"))
    for name, value in weights[0].items():
        assert torch.equal(weights[1][name], value), name


def test_the_default_encode_columns_is_collate_of_encode(tmp_path):
    import torch

    from privet.data.arrow import ArrowShardWriter, ArrowTable

    writer = ArrowShardWriter(tmp_path, "train", shard_rows=4)
    for i in range(10):
        writer.add({"x": [float(i), i / 2], "label": i % 3})
    table = ArrowTable(writer.close())
    model = tinyplugin.MLP()  # no encode_columns of its own
    order = [9, 0, 5, 4]
    x, y = model.encode_columns(table.columns(order))
    ex, ey = model.collate([model.encode(r) for r in table.rows(order)])
    assert torch.equal(x, ex) and torch.equal(y, ey) and y.tolist() == [0, 0, 2, 1]
