"""Cleaners: fitted on training records only, JSON state that round-trips, counters."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from privet import ConfigError, DataError, DropRecord
from privet_timeseries import inverse_transform


def roundtrip(host, name, options, cleaner):
    """A fresh cleaner restored from ``cleaner``'s state, through JSON (as checkpoints do)."""
    fresh = host.make("cleaner", name, options)
    fresh.load_state_dict(json.loads(json.dumps(cleaner.state_dict())))
    return fresh


def test_impute_fills_missing_nan_and_inf_with_the_training_mean_and_counts(host):
    imp = host.make("cleaner", "timeseries.impute", {"indicator": True})
    imp.fit([{"a": 1.0, "b": 10.0}, {"a": 3.0, "b": None}, {"a": None, "b": 20.0}])
    out = [imp.clean(r) for r in ({"a": None, "b": float("nan")}, {"a": float("inf"), "b": 1.0})]
    assert out[0] == {"a": 2.0, "b": 15.0, "a_missing": 1.0, "b_missing": 1.0}
    assert out[1]["a"] == 2.0 and out[1]["b"] == 1.0 and out[1]["b_missing"] == 0.0
    assert imp.report() == {"imputed.a": 2, "imputed.b": 1}
    again = roundtrip(host, "timeseries.impute", {"indicator": True}, imp)
    assert again.clean({"a": None, "b": 4.0})["a"] == 2.0


def test_impute_median_per_series_and_constant(host):
    med = host.make("cleaner", "timeseries.impute", {"method": "median", "per_series": True,
                                                     "columns": ["v"]})
    med.fit([{"series": "a", "v": v} for v in (1.0, 2.0, 100.0)] + [{"series": "b", "v": 7.0}])
    assert med.clean({"series": "a", "v": None})["v"] == 2.0
    assert med.clean({"series": "b", "v": None})["v"] == 7.0
    assert med.clean({"series": "new", "v": None})["v"] == 4.5  # global median
    const = host.make("cleaner", "timeseries.impute", {"method": "constant", "value": -1.0})
    const.fit([{"v": 5.0}])
    assert const.clean({"v": None}) == {"v": -1.0}


def test_impute_refuses_a_column_with_no_training_value(host):
    imp = host.make("cleaner", "timeseries.impute", {"columns": ["v"]})
    with pytest.raises(DataError, match="'v' has no finite value in the training split"):
        imp.fit([{"v": None}, {"v": float("nan")}])


def test_cleaner_used_before_fit_fails_clearly(host):
    imp = host.make("cleaner", "timeseries.impute", {})
    with pytest.raises(DataError, match="before it was fitted"):
        imp.clean({"v": 1.0})


def test_outliers_sigma_clip_and_iqr_drop(host):
    rng = np.random.default_rng(0)
    train = [{"v": float(x)} for x in rng.normal(0, 1, 2000)]
    clip = host.make("cleaner", "timeseries.outliers", {"method": "sigma", "k": 3.0})
    clip.fit(train)
    lo, hi = clip.bounds["v"]["global"]
    assert hi == pytest.approx(3.0, abs=0.2) and lo == pytest.approx(-3.0, abs=0.2)
    assert clip.clean({"v": 50.0})["v"] == hi
    assert clip.clean({"v": 0.5})["v"] == 0.5
    assert clip.report() == {"clipped.v": 1}
    drop = host.make("cleaner", "timeseries.outliers", {"method": "iqr", "action": "drop"})
    drop.fit(train)
    with pytest.raises(DropRecord) as info:
        drop.clean({"v": 9.0})
    assert info.value.reason == "outlier" and info.value.bad is False
    assert drop.clean({"v": None}) == {"v": None}


def test_categorical_onehot_and_label_with_unknown_bucket(host):
    train = [{"color": c} for c in ["red"] * 5 + ["blue"] * 3 + ["green"]]
    onehot = host.make("cleaner", "timeseries.categorical", {"columns": ["color"], "min_count": 2})
    onehot.fit(train)
    assert onehot.clean({"color": "red"}) == {"color=blue": 0.0, "color=red": 1.0, "color=<unknown>": 0.0}
    assert onehot.clean({"color": "green"})["color=<unknown>"] == 1.0  # too rare in training
    assert onehot.report() == {"unknown.color": 1}
    label = host.make("cleaner", "timeseries.categorical", {"columns": ["color"], "method": "label"})
    label.fit(train)
    assert [label.clean({"color": c})["color"] for c in ("blue", "green", "red", "purple")] == [1, 2, 3, 0]
    again = roundtrip(host, "timeseries.categorical", {"columns": ["color"], "method": "label"}, label)
    assert again.clean({"color": "red"})["color"] == 3


def test_scale_methods_and_exact_inverse_from_saved_state(host):
    train = [{"series": s, "v": float(v)} for s, vals in (("a", [1, 2, 3, 4]), ("b", [100, 200, 300]))
             for v in vals]
    for method in ("standard", "minmax", "robust"):
        sc = host.make("cleaner", "timeseries.scale", {"method": method, "per_series": True})
        sc.fit(train)
        scaled = sc.clean({"series": "b", "v": 250.0})["v"]
        state = json.loads(json.dumps(sc.state_dict()))
        assert inverse_transform(state, "v", scaled, series="b") == pytest.approx(250.0)
        assert sc.inverse("v", np.array([scaled]), "b")[0] == pytest.approx(250.0)
    mm = host.make("cleaner", "timeseries.scale", {"method": "minmax"})
    mm.fit(train)
    assert mm.clean({"v": 1.0})["v"] == 0.0 and mm.clean({"v": 300.0})["v"] == 1.0
    assert mm.clean({"v": float("inf")})["v"] is None
    assert mm.report() == {"non_finite.v": 1}


def test_regularize_snaps_times_to_the_grid(host):
    reg = host.make("cleaner", "timeseries.regularize", {"frequency": "15min", "mode": "round"})
    assert reg.clean({"time": 3600.0 + 8 * 60})["time"] == 3600.0 + 15 * 60
    assert reg.clean({"time": 3600.0 + 7 * 60})["time"] == 3600.0
    floor = host.make("cleaner", "timeseries.regularize", {"frequency": "1h"})
    assert floor.clean({"time": 7199.0})["time"] == 3600.0
    assert floor.report() == {"snapped": 1}
    with pytest.raises(DropRecord):
        floor.clean({"value": 1.0})
    with pytest.raises(ConfigError, match="months and years"):
        host.make("cleaner", "timeseries.regularize", {"frequency": "1month"})


def test_calendar_features_are_cyclical_and_timezone_aware(host):
    cal = host.make("cleaner", "timeseries.calendar", {"features": ["hour", "day_of_week", "is_weekend"]})
    # 2024-01-06 is a Saturday; 18:00 UTC
    rec = cal.clean({"time": 1704564000.0})
    assert rec["cal_hour_sin"] == pytest.approx(math.sin(2 * math.pi * 18 / 24))
    assert rec["cal_day_of_week_cos"] == pytest.approx(math.cos(2 * math.pi * 5 / 7))
    assert rec["cal_is_weekend"] == 1.0
    tokyo = host.make("cleaner", "timeseries.calendar", {"features": ["hour"], "cyclical": False,
                                                         "timezone": "Asia/Tokyo"})
    assert tokyo.clean({"time": 1704564000.0})["cal_hour"] == 3.0  # 18:00 UTC is 03:00 in Tokyo
    with pytest.raises(ConfigError, match="unknown timezone"):
        host.make("cleaner", "timeseries.calendar", {"timezone": "Mars/Olympus"})
