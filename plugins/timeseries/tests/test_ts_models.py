"""Models: shapes, loss as a sum over items, predictions in data units, state round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privet import ConfigError, DataError
from privet_timeseries.synthetic import seasonal_rows

H = 3600.0


@pytest.fixture
def series_records():
    """Two hourly series with very different levels (10 and 1000), plus calendar features."""
    recs = []
    for name, level in (("low", 10.0), ("high", 1000.0)):
        for i, row in enumerate(seasonal_rows(80, seed=1)):
            recs.append({"time": i * H, "series": name, "value": row["value"] - 10.0 + level,
                         "cal_hour_sin": float(np.sin(2 * np.pi * i / 24))})
    return recs


def batch_of(model, records, n=8):
    exs = list(model.examples(records, "train"))[:n]
    return model.collate([model.encode(e) for e in exs])


@pytest.mark.parametrize("name, extra", [
    ("timeseries.lstm", {"hidden_size": 8, "num_layers": 2}),
    ("timeseries.tft", {"hidden_size": 8, "attention_heads": 2}),
])
def test_forecast_models_return_horizon_by_target_in_data_units(host, series_records, name, extra):
    m = host.make("model", name, {"input_length": 12, "horizon": 4, **extra})
    m.fit(series_records)
    torch.manual_seed(0)
    module = m.build()
    for p in module.parameters():
        torch.nn.init.zeros_(p)  # a zero network predicts 0 in scaled units...
    batch = batch_of(m, series_records, n=1000)
    assert batch["past"].shape == (2 * (80 - 16 + 1), 12, 1)  # every window of both series
    with torch.no_grad():
        out = module(*m.example_inputs(batch))
    q = 3 if name == "timeseries.tft" else 1
    assert out.shape == ((130, 4, 1, q) if q > 1 else (130, 4, 1))
    # ...which is each series' own training mean once mapped back to data units
    means = {s: np.mean([r["value"] for r in series_records if r["series"] == s]) for s in ("low", "high")}
    idx = {i + 1: s for i, s in enumerate(m.state["series"])}
    for row, sid in zip(out.reshape(130, -1), batch["series"].tolist()):
        assert row.numpy() == pytest.approx(means[idx[sid]], rel=1e-4)


def test_loss_is_a_sum_over_items_and_count_is_the_number_of_windows(host, series_records):
    m = host.make("model", "timeseries.tft", {"input_length": 12, "horizon": 4, "hidden_size": 8,
                                              "attention_heads": 2, "dropout": 0.0})
    m.fit(series_records)
    module = m.build().eval()
    exs = list(m.examples(series_records, "train"))[:6]
    with torch.no_grad():
        whole = m.step(module, m.collate([m.encode(e) for e in exs]))
        parts = [m.step(module, m.collate([m.encode(e) for e in exs[i:i + 2]])) for i in (0, 2, 4)]
    assert whole.count == 6
    assert float(whole.loss_sum) == pytest.approx(sum(float(p.loss_sum) for p in parts), rel=1e-5)
    assert whole.predictions.shape == whole.targets.shape == (6, 4, 1)


def test_fitted_state_round_trips_through_json_to_identical_predictions(host, series_records):
    opts = {"input_length": 12, "horizon": 4, "hidden_size": 8, "num_layers": 1}
    m = host.make("model", "timeseries.lstm", opts)
    m.fit(series_records)
    exs = list(m.examples(series_records, "train"))
    module = m.build().eval()
    again = host.make("model", "timeseries.lstm", opts)
    again.load_state_dict(json.loads(json.dumps(m.state_dict())))
    module2 = again.build().eval()
    module2.load_state_dict(module.state_dict())
    a = m.predict(module, exs[:5])
    b = again.predict(module2, exs[:5])
    assert a == b and len(a[0]["forecast"]) == 4
    assert a[0]["series"] in ("low", "high")


def test_lstm_bidirectional_sequence_classification(host):
    recs = [{"time": i * H, "series": "s", "value": float(np.sin(i / 3)), "label": "up" if np.cos(i / 3) > 0 else "down"}
            for i in range(60)]
    m = host.make("model", "timeseries.lstm", {"task": "classification", "input_length": 6,
                                               "bidirectional": True, "hidden_size": 8})
    m.fit(recs)
    assert m.task == "classification" and m.state["labels"] == ["down", "up"]
    exs = list(m.examples(recs, "train"))
    assert len(exs) == 55 and exs[0]["label"] == recs[5]["label"]
    batch = m.collate([m.encode(e) for e in exs[:10]])
    out = m.step(m.build(), batch)
    assert out.predictions.shape == (10, 2) and out.targets.dtype == torch.int64


def test_quantile_options_are_validated(host):
    with pytest.raises(ConfigError, match="must include 0.5"):
        host.make("model", "timeseries.tft", {"quantiles": [0.1, 0.9]})
    with pytest.raises(ConfigError, match="attention_heads"):
        host.make("model", "timeseries.tft", {"hidden_size": 2, "attention_heads": 4})
    with pytest.raises(ConfigError, match="task"):
        host.make("model", "timeseries.tft", {"task": "classification"})


def test_mlp_encodes_rows_embeds_codes_and_drops_missing_inputs(host):
    recs = [{"a": float(i), "b": float(i % 3), "shop": i % 4, "label": "x" if i % 2 else "y"} for i in range(40)]
    m = host.make("model", "timeseries.mlp", {"embed": ["shop"], "hidden": [8]})
    m.fit(recs)
    assert m.state["features"] == ["a", "b"] and m.state["cardinalities"] == [4]
    batch = m.collate([m.encode(r) for r in recs[:5]])
    out = m.step(m.build(), batch)
    assert out.predictions.shape == (5, 2) and out.count == 5
    assert m.encode({"a": 1.0, "b": 2.0, "shop": 99, "label": "x"})["codes"].tolist() == [0]
    from privet import DropRecord

    with pytest.raises(DropRecord, match="missing_value"):
        m.encode({"a": None, "b": 1.0, "shop": 1, "label": "x"})
    with pytest.raises(DataError, match="at least 2 classes"):
        host.make("model", "timeseries.mlp", {}).fit([{"a": 1.0, "label": "x"}])


def test_mlp_regression_predicts_in_label_units(host):
    recs = [{"a": float(i), "label": 1000.0 + 5 * i} for i in range(30)]
    m = host.make("model", "timeseries.mlp", {"task": "regression", "hidden": [4]})
    m.fit(recs)
    module = m.build()
    for p in module.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        pred = module(torch.zeros(3, 1))
    assert pred.tolist() == pytest.approx([np.mean([r["label"] for r in recs])] * 3)


def test_tft_postprocess_gives_median_forecast_and_named_quantiles(host, series_records):
    m = host.make("model", "timeseries.tft", {"input_length": 12, "horizon": 4, "hidden_size": 8,
                                              "attention_heads": 2})
    m.fit(series_records)
    exs = list(m.examples(series_records, "train"))[:3]
    [first, *_] = m.predict(m.build(), exs)
    assert set(first) == {"series", "time", "targets", "forecast", "quantiles"}
    assert list(first["quantiles"]) == ["0.1", "0.5", "0.9"]
    assert first["forecast"] == first["quantiles"]["0.5"] and len(first["forecast"]) == 4


def test_mlp_inference_encoding_needs_no_label_and_names_classes(host):
    recs = [{"a": float(i), "label": "x" if i % 2 else "y"} for i in range(10)]
    m = host.make("model", "timeseries.mlp", {"hidden": [4]})
    m.fit(recs)
    assert m.class_names() == ["x", "y"]
    assert m.encode_inputs({"a": 3.0})["x"].tolist() == [3.0]


def _cached(examples, folder):
    from privet.data.arrow import ArrowShardWriter, ArrowTable

    writer = ArrowShardWriter(folder, "train", shard_rows=25)  # several shard files
    for example in examples:
        writer.add(example)
    return ArrowTable(writer.close())


@pytest.mark.parametrize("task_options", [
    {},  # forecast, with known covariates
    {"task": "regression", "label": "target"},
    {"task": "classification", "label": "target"},
])
def test_encode_columns_builds_the_batch_collate_would(host, series_records, tmp_path, task_options):
    from privet import DropRecord

    records = [dict(r, target=(r["value"] > 500) if task_options.get("task") == "classification"
                    else r["value"] * 2) for r in series_records]
    opts = {"input_length": 12, "horizon": 1 if task_options else 4, "hidden_size": 8,
            "num_layers": 1, **task_options}
    m = host.make("model", "timeseries.lstm", opts)
    m.fit(records)
    table = _cached(list(m.examples(records, "train")), tmp_path)
    order = [len(table) - 1, 0, 30, 31, 7, 60, 2]
    fast = m.encode_columns(table.columns(order))
    slow = m.collate([m.encode(r) for r in table.rows(order)])
    assert set(fast) == set(slow)
    for key in slow:
        assert fast[key].dtype == slow[key].dtype and torch.equal(fast[key], slow[key]), key

    broken = list(m.examples(records, "train"))[:3]
    window = np.frombuffer(broken[1]["window"], np.float32).copy()
    window[0] = np.nan
    broken[1]["window"] = window.tobytes()
    bad = _cached(broken, tmp_path / "bad")
    with pytest.raises(DropRecord):  # the engine then encodes the batch window by window
        m.encode_columns(bad.columns([0, 1, 2]))
    assert len(m.encode_columns(bad.columns([0, 2]))["past"]) == 2
