"""Augmenters: seeded, shape-preserving, consistent between input and horizon."""

from __future__ import annotations

import numpy as np
import pytest

from privet import ConfigError
from privet_timeseries.windows import Window

H = 3600.0
NAMES = ["timeseries.jitter", "timeseries.magnitude_scale", "timeseries.window_slice",
         "timeseries.time_warp", "timeseries.resample"]


@pytest.fixture
def model_and_window(host):
    recs = [{"time": i * H, "series": "s", "value": float(10 + np.sin(i / 2)), "temp": float(i),
             "cal_hour_sin": float(np.sin(2 * np.pi * i / 24))} for i in range(40)]
    m = host.make("model", "timeseries.lstm", {"input_length": 16, "horizon": 4, "hidden_size": 4})
    m.fit(recs)
    return m, next(iter(m.examples(recs, "train")))


@pytest.mark.parametrize("name", NAMES)
def test_augmenters_are_seeded_keep_shapes_and_still_encode(host, model_and_window, name):
    m, ex = model_and_window
    aug = host.make("augmenter", name, {})
    a = aug.augment(dict(ex), np.random.default_rng([0, 1, 2]))
    b = aug.augment(dict(ex), np.random.default_rng([0, 1, 2]))
    c = aug.augment(dict(ex), np.random.default_rng([0, 1, 3]))
    assert a == b and a != ex and a != c
    wa, w = Window.from_record(a), Window.from_record(ex)
    assert (wa.past.shape, wa.future.shape, wa.known.shape) == (w.past.shape, w.future.shape, w.known.shape)
    assert {k: v for k, v in a.items() if k != "window"} == {k: v for k, v in ex.items() if k != "window"}
    m.encode(a)  # a valid, finite window


@pytest.mark.parametrize("name", NAMES)
def test_probability_zero_leaves_the_window_alone(host, model_and_window, name):
    _, ex = model_and_window
    assert host.make("augmenter", name, {"p": 0.0}).augment(ex, np.random.default_rng(0)) is ex


def test_jitter_perturbs_inputs_but_never_the_forecast_target(host, model_and_window):
    _, ex = model_and_window
    out = Window.from_record(host.make("augmenter", "timeseries.jitter", {"sigma": 0.1}).augment(
        ex, np.random.default_rng(0)))
    w = Window.from_record(ex)
    assert np.array_equal(out.future, w.future) and np.array_equal(out.known, w.known)
    noise = out.past - w.past
    assert 0 < np.abs(noise).mean() < 0.2 * w.past.std(axis=0).max()


def test_magnitude_scale_multiplies_input_and_horizon_targets_alike(host, model_and_window):
    _, ex = model_and_window
    out = Window.from_record(host.make("augmenter", "timeseries.magnitude_scale", {}).augment(
        ex, np.random.default_rng(5)))
    w = Window.from_record(ex)
    factors = np.concatenate([out.past[:, 0] / w.past[:, 0], out.future[:, 0] / w.future[:, 0]])
    assert np.allclose(factors, factors[0], rtol=1e-5) and factors[0] != 1.0
    assert np.array_equal(out.past[:, 1], w.past[:, 1])  # covariates unchanged


def test_time_warp_keeps_the_window_ends_and_slice_at_full_ratio_is_identity(host, model_and_window):
    _, ex = model_and_window
    w = Window.from_record(ex)
    warped = Window.from_record(host.make("augmenter", "timeseries.time_warp", {"sigma": 0.5}).augment(
        ex, np.random.default_rng(1)))
    assert warped.past[0, 0] == pytest.approx(w.past[0, 0]) and warped.future[-1, 0] == pytest.approx(w.future[-1, 0])
    same = Window.from_record(host.make("augmenter", "timeseries.window_slice", {"ratio": 1.0}).augment(
        ex, np.random.default_rng(1)))
    assert np.allclose(same.past, w.past) and np.allclose(same.future, w.future)


def test_resample_at_rate_two_reads_every_other_step_around_the_cut(host, model_and_window):
    _, ex = model_and_window
    w = Window.from_record(ex)
    out = Window.from_record(host.make("augmenter", "timeseries.resample", {"rates": [2.0, 2.0]}).augment(
        ex, np.random.default_rng(0)))
    joined = np.concatenate([w.past[:, 0], w.future[:, 0]])
    # output row L-1 reads 15.5 - 0.5*2 = 14.5, row L-2 reads 12.5 ...
    assert out.past[-1, 0] == pytest.approx((joined[14] + joined[15]) / 2, rel=1e-5)
    assert out.past[-2, 0] == pytest.approx((joined[12] + joined[13]) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match="rates"):
        host.make("augmenter", "timeseries.resample", {"rates": [2.0, 1.0]})
