"""End to end with the engine: pipelines from CSV to report, on data the tests generate.

Acceptance: on a noisy seasonal series the LSTM and the TFT each beat the seasonal-naive
forecast on validation MAE (computed on the very windows the engine scored, read back from
the run's cache); the MLP reaches 85% accuracy on a table with missing values, outliers and
categories; nothing from the validation period reaches fitted statistics or training
windows; dirty rows are handled by rule and never reach a batch as NaN.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from privet_timeseries import inverse_transform
from privet_timeseries.baselines import seasonal_naive_mae
from privet_timeseries.synthetic import seasonal_rows, tabular_rows, write_csv
from privet_timeseries.windows import Window

pytestmark = pytest.mark.usefixtures("one_thread")

SEASON = 24


def cached_examples(report: dict, split: str) -> list[dict]:
    """The window examples of ``split`` exactly as the engine stored and scored them."""
    from privet.data.arrow import ArrowTable

    cache = Path(report["data"]["cache"])
    meta = json.loads((cache / "meta.json").read_text())
    return list(ArrowTable([str(cache / f) for f in meta["example_files"][split]]).iter_rows())


def forecast_pipeline(model: dict, **data) -> dict:
    return {
        "name": model["name"].split(".")[-1],
        "seed": 0,
        "data": {
            "source": {"name": "timeseries.csv", "options": {
                "paths": ["series.csv"], "series_column": "series", "target_columns": ["value"],
                "feature_columns": ["temperature"]}},
            "cleaners": [{"name": "timeseries.calendar", "options": {"features": ["hour", "day_of_week"]}},
                         {"name": "timeseries.scale", "options": {"exclude": ["value"]}}],
            "split": {"method": "ordered", "val": 0.2},
            **data,
        },
        "model": model,
        "train": {"epochs": 8, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003},
                  "progress": "none"},
    }


def test_lstm_beats_seasonal_naive_on_a_noisy_seasonal_series(host, run_pipeline, tmp_path):
    write_csv(tmp_path / "series.csv", seasonal_rows(1400, seed=1))
    out = run_pipeline(forecast_pipeline({"name": "timeseries.lstm", "options": {
        "input_length": 48, "horizon": 12, "hidden_size": 32, "num_layers": 1}}))
    out.assert_success()
    val = cached_examples(out.report, "val")
    naive = seasonal_naive_mae(val, SEASON)
    mae = out.report["final"]["val/mae"]
    assert out.report["data"]["examples"]["val"] == len(val) > 200
    assert mae < 0.9 * naive, f"LSTM val MAE {mae:.3f} vs seasonal naive {naive:.3f}"
    assert out.report["final"]["val/smape"] < 0.15


def test_tft_beats_seasonal_naive_with_a_time_cut_split(host, run_pipeline, tmp_path):
    write_csv(tmp_path / "series.csv", seasonal_rows(1400, seed=2))
    cfg = forecast_pipeline({"name": "timeseries.tft", "options": {
        "input_length": 48, "horizon": 12, "hidden_size": 16, "attention_heads": 2}},
        split={"method": "field", "field": "split"})
    cfg["data"]["source"]["options"]["split_time"] = "2024-02-21T00:00:00"  # row 1224 onwards
    out = run_pipeline(cfg)
    out.assert_success()
    assert out.report["data"]["counts"] == {"train": 1224, "val": 176, "test": 0}
    val = cached_examples(out.report, "val")
    naive = seasonal_naive_mae(val, SEASON)
    mae = out.report["final"]["val/mae"]
    assert mae < 0.9 * naive, f"TFT val MAE {mae:.3f} vs seasonal naive {naive:.3f}"
    assert out.report["final"]["val/loss"] > 0  # the quantile (pinball) loss


def test_mlp_reaches_85_percent_on_a_dirty_table(host, run_pipeline, tmp_path):
    write_csv(tmp_path / "table.csv", tabular_rows(3000, seed=3))
    out = run_pipeline({
        "name": "mlp", "seed": 0,
        "data": {
            "source": {"name": "timeseries.csv", "options": {
                "paths": ["table.csv"], "time_column": None, "target_columns": ["label"],
                "categorical_columns": ["color", "size", "label"]}},
            "cleaners": [
                {"name": "timeseries.outliers", "options": {"method": "iqr", "k": 3.0}},
                {"name": "timeseries.impute", "options": {"method": "median", "indicator": True}},
                {"name": "timeseries.categorical", "options": {"columns": ["color", "size"],
                                                                "max_categories": 4}},
                {"name": "timeseries.scale", "options": {"method": "robust"}},
            ],
            "split": {"method": "random", "val": 0.2},
        },
        "model": {"name": "timeseries.mlp", "options": {"hidden": [64, 64], "dropout": 0.05}},
        "train": {"epochs": 20, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003},
                  "scheduler": "cosine", "progress": "none"},
    })
    out.assert_success()
    assert out.report["final"]["val/accuracy"] >= 0.85
    cleaners = out.report["data"]["cleaners"]
    assert any(k.startswith("clipped.") for c in cleaners.values() for k in c)
    assert any(k.startswith("imputed.") for c in cleaners.values() for k in c)
    assert any("unknown.color" in c for c in cleaners.values())  # "purple": too rare to keep


def test_validation_period_never_reaches_fitted_statistics_or_training_windows(host, run_pipeline, tmp_path):
    rows = seasonal_rows(600, seed=4)
    for row in rows[480:]:  # the validation period, wildly different
        row["value"] += 1e4
        row["temperature"] += 1e3
    write_csv(tmp_path / "series.csv", rows)
    cfg = forecast_pipeline({"name": "timeseries.lstm", "options": {
        "input_length": 24, "horizon": 6, "hidden_size": 8, "num_layers": 1}})
    cfg["data"]["cleaners"] = [{"name": "timeseries.outliers", "options": {"exclude": ["value"]}},
                               {"name": "timeseries.scale", "options": {"exclude": ["value"]}}]
    cfg["train"]["epochs"] = 1
    out = run_pipeline(cfg)
    out.assert_success()
    assert out.report["data"]["counts"]["train"] == 480
    states = json.loads((out.run_dir / "state/components.json").read_text())
    train_temp = np.array([r["temperature"] for r in rows[:480]])
    hi = states["cleaners"][0]["state"]["bounds"]["temperature"]["global"][1]
    assert hi == pytest.approx(train_temp.mean() + 3 * train_temp.std(), rel=1e-6)
    scaler = states["cleaners"][1]["state"]["scaler"]["columns"]["temperature"]["global"]
    assert scaler == pytest.approx([train_temp.mean(), train_temp.std()], rel=1e-6)
    target = states["model"]["state"]["target_scaler"]["columns"]["value"]
    assert target["global"][0] < 100 and all(p[0] < 100 for p in target["series"].values())
    for ex in cached_examples(out.report, "train"):
        w = Window.from_record(ex)
        assert w.past[:, 0].max() < 100 and w.future.max() < 100
    for ex in cached_examples(out.report, "val"):
        assert Window.from_record(ex).past[:, 0].min() > 1000  # validation windows: only validation rows


def test_dirty_rows_are_handled_by_rule_and_reported(host, run_pipeline, tmp_path):
    rows = seasonal_rows(700, seed=5)
    rows[10]["timestamp"] = "not a time"
    rows[20]["value"] = "nan"
    rows[21]["temperature"] = "inf"
    rows[30]["value"] = ""
    rows.insert(40, dict(rows[40], value=999.0))      # a duplicated timestamp
    rows[50], rows[51] = rows[51], rows[50]           # unsorted rows
    write_csv(tmp_path / "series.csv", rows)
    cfg = forecast_pipeline({"name": "timeseries.lstm", "options": {
        "input_length": 24, "horizon": 6, "hidden_size": 8, "num_layers": 1, "frequency": "1h",
        "duplicates": "first"}}, max_bad_fraction=0.05)
    cfg["data"]["cleaners"].append({"name": "timeseries.impute", "options": {"columns": ["temperature"]}})
    cfg["train"]["epochs"] = 1
    cfg["export"] = {"formats": ["onnx"]}
    with pytest.warns(UserWarning, match="series had unsorted rows"):
        out = run_pipeline(cfg)
    out.assert_success()
    data = out.report["data"]
    assert data["dropped"] == {"unparseable_timestamp": 1}
    assert data["dropped_in_training"] == {}
    prep = json.loads((out.run_dir / "state/components.json").read_text())["model"]["state"]["windowing"]
    assert prep["train"]["duplicate_timestamps"] == 1 and prep["train"]["unsorted_series"] == 1
    # the dropped row's slot is re-inserted on the grid (6 empty cells: value, temperature
    # and 4 calendar features) and interpolated, as are the 2 missing values (nan, empty)
    assert prep["train"]["inserted_rows"] == 1 and prep["train"]["filled_values"] == 6 + 2
    assert all(math.isfinite(v) for v in out.report["final"].values())
    assert out.report["export"]["artifacts"]["onnx"]["verified"]


def test_trained_model_predicts_in_data_units_after_loading(host, run_pipeline, tmp_path):
    from privet import load_trained
    from privet.train.loading import load_cleaners  # no public equivalent yet

    rows = seasonal_rows(500, seed=6)
    for row in rows:
        row["value"] = row["value"] * 100 + 5000  # far from unit scale
    write_csv(tmp_path / "series.csv", rows)
    cfg = forecast_pipeline({"name": "timeseries.lstm", "options": {
        "input_length": 24, "horizon": 6, "hidden_size": 16, "num_layers": 1}})
    cfg["data"]["cleaners"].append({"name": "timeseries.scale", "options": {"columns": ["value"]}})
    cfg["model"]["options"]["target_scaling"] = "none"  # the cleaner scaled the target already
    cfg["train"]["epochs"] = 6
    out = run_pipeline(cfg)
    out.assert_success()
    model, module = load_trained(out.run_dir, host=host)
    val = cached_examples(out.report, "val")
    preds = model.predict(module, val)
    scale_cleaner = load_cleaners(out.run_dir, host=host)[-1]
    forecast = np.array([p["forecast"] for p in preds])[..., 0]
    actual = np.array([Window.from_record(ex).future[:, 0] for ex in val])
    # the model works in the cleaner's scaled units; the saved state maps both back
    state = json.loads((out.run_dir / "state/components.json").read_text())["cleaners"][-1]["state"]
    in_units = inverse_transform(state, "value", forecast, series="s0")
    assert np.allclose(in_units, scale_cleaner.inverse("value", forecast))
    truth = inverse_transform(state, "value", actual)
    assert 4000 < in_units.mean() < 6000
    assert np.abs(in_units - truth).mean() < 0.6 * np.abs(truth - truth.mean()).mean()


def short_split_pipeline(tmp_path: Path, rows: int, val: float) -> dict:
    """A tiny LSTM pipeline (windows of 24 + 6 rows) on ``rows`` hourly rows, ordered split."""
    write_csv(tmp_path / "series.csv", seasonal_rows(rows, seed=7))
    cfg = forecast_pipeline({"name": "timeseries.lstm", "options": {
        "input_length": 24, "horizon": 6, "hidden_size": 4, "num_layers": 1}}, split={"method": "ordered", "val": val})
    cfg["data"]["cleaners"] = []
    cfg["train"]["epochs"] = 1
    return cfg


def test_run_whose_validation_split_has_no_full_window_fails_instead_of_completing(host, run_pipeline, tmp_path):
    from privet import DataError, PrivetError

    out = run_pipeline(short_split_pipeline(tmp_path, 200, val=0.1))  # 20 validation rows < 30
    assert isinstance(out.error, DataError) and isinstance(out.error, PrivetError)
    assert str(out.error) == (
        "model timeseries.lstm: the validation split has no full window: it needs at least 30 rows "
        "per series (input_length 24 + horizon 6); its longest series 's0' has 20; lower "
        "input_length/horizon or change data.split (for forecasting, {method: ordered} or "
        "{method: field} with the source's split_time, so that the split holds a contiguous later "
        "period)")
    assert not list(tmp_path.glob("runs/*/report.json")) or all(
        json.loads(p.read_text()).get("status") != "completed" for p in tmp_path.glob("runs/*/report.json"))


def test_run_whose_training_split_has_no_full_window_fails_naming_the_need(host, run_pipeline, tmp_path):
    from privet import DataError

    out = run_pipeline(short_split_pipeline(tmp_path, 60, val=0.5))  # 30 training rows: one window
    out.assert_success()
    out = run_pipeline(short_split_pipeline(tmp_path, 50, val=0.5))  # 25 training rows
    assert isinstance(out.error, DataError)
    assert "the training split has no full window: it needs at least 30 rows per series" in str(out.error)
    assert "its longest series 's0' has 25" in str(out.error)


def test_launcher_prints_the_empty_validation_split_as_one_line_and_exits_2(tmp_path):
    import yaml

    cfg = short_split_pipeline(tmp_path, 200, val=0.1)
    cfg["runs_dir"] = str(tmp_path / "runs")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    script = Path(sys.executable).with_name("privet")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "privet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    r = subprocess.run([*launcher, "run", "pipeline.yaml"],
                       cwd=tmp_path, env={**env, "PRIVET_LOAD_PLUGINS": "timeseries"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "no full window" in line]
    assert len(errors) == 1 and "validation split" in errors[0] and "Traceback" not in r.stderr


def test_starter_pipeline_runs_as_written_and_takes_its_lr_from_the_model(host, run_pipeline, tmp_path):
    import yaml

    from privet_timeseries import plugin

    config = yaml.safe_load(plugin.starter_pipeline("timeseries"))
    assert config["train"]["optimizer"] == "adamw"  # no lr: the model's default_lr() decides
    assert host.make("model", "timeseries.lstm", config["model"]["options"]).default_lr() == 3e-3
    rows = [{k: r[k] for k in ("timestamp", "value", "temperature")} for r in seasonal_rows(3800, seed=8)]
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "series.csv", rows)  # from 2024-01-01: 152 rows after split_time
    out = run_pipeline(config, overrides=["train.epochs=1", "export=null", "train.progress=none"])
    out.assert_success()
    assert out.report["data"]["examples"]["val"] > 0
    assert math.isfinite(out.report["final"]["val/mae"])
