"""Windowing in model.examples: sorting, duplicates, grids, gaps, series and split boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from privet import DataError, DropRecord
from privet_timeseries.models.base import LongSequenceWarning, TimeSeriesWarning
from privet_timeseries.windows import Window

H = 3600.0


def rows(values, series="s", start=0, step=H):
    return [{"time": start + i * step, "series": series, "value": float(v) if v is not None else None}
            for i, v in enumerate(values)]


def lstm(host, **opts):
    base = {"input_length": 4, "horizon": 2, "hidden_size": 8, "num_layers": 1}
    return host.make("model", "timeseries.lstm", {**base, **opts})


def windows_of(model, records, split="train"):
    return [Window.from_record(r) for r in model.examples(records, split)], \
        list(model.examples(records, split))


def test_windows_slide_over_each_series_and_never_mix_series(host):
    recs = rows(range(10), "a") + rows(range(100, 108), "b")
    m = lstm(host)
    m.fit(recs)
    exs = list(m.examples(recs, "train"))
    assert len(exs) == (10 - 6 + 1) + (8 - 6 + 1)
    for ex in exs:
        w = Window.from_record(ex)
        both = np.concatenate([w.past[:, 0], w.future[:, 0]])
        assert np.all(np.diff(both) == 1.0)  # consecutive rows of a single series
        assert (both[0] >= 100) == (ex["series"] == "b")
    assert {ex["series_index"] for ex in exs} == {1, 2}


def test_unsorted_rows_are_sorted_and_reported(host):
    recs = rows(range(8))
    shuffled = [recs[i] for i in (3, 0, 7, 1, 5, 2, 6, 4)]
    m = lstm(host)
    m.fit(shuffled)
    with pytest.warns(TimeSeriesWarning, match="1 series had unsorted rows"):
        ws, _ = windows_of(m, shuffled)
    assert ws[0].past[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert m.prep_report["train"]["unsorted_series"] == 1


@pytest.mark.parametrize("rule, expected", [("mean", 3.0), ("first", 2.0), ("last", 4.0)])
def test_duplicated_timestamps_are_merged_by_rule(host, rule, expected):
    recs = rows([0, 1, 2, 3, 4, 5, 6, 7])
    recs.insert(3, {"time": 2 * H, "series": "s", "value": 4.0})  # a second row at t=2h
    m = lstm(host, duplicates=rule)
    m.fit(recs)
    with pytest.warns(TimeSeriesWarning, match="1 rows shared a timestamp"):
        ws, _ = windows_of(m, recs)
    assert ws[0].past[2, 0] == expected
    assert len(ws) == 3  # 8 distinct times


def test_duplicated_timestamps_can_fail_the_run_naming_series_and_time(host):
    recs = rows(range(8)) + [{"time": 0.0, "series": "s", "value": 9.0}]
    m = lstm(host, duplicates="error")
    m.fit(recs)
    with pytest.raises(DataError, match=r"series 's': 1 rows share a timestamp \(first at 1970-01-01T00:00:00"):
        list(m.examples(recs, "train"))


def test_regular_grid_inserts_missing_slots_and_interpolates(host):
    recs = [r for r in rows(range(10)) if r["value"] not in (4.0, 5.0)]
    m = lstm(host, frequency="1h")
    m.fit(recs)
    with pytest.warns(TimeSeriesWarning, match="2 empty grid slots were inserted"):
        ws, _ = windows_of(m, recs)
    assert len(ws) == 5
    assert ws[2].past[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]  # interpolated
    assert m.prep_report["train"]["filled_values"] == 2


def test_forward_fill_and_unfillable_gaps_skip_windows(host):
    recs = rows([None, 1, 2, None, 4, 5, 6, 7, 8])
    m = lstm(host, fill="ffill")
    m.fit(recs)
    with pytest.warns(TimeSeriesWarning, match="windows were skipped"):
        ws, _ = windows_of(m, recs)
    # the leading gap cannot be forward-filled: the window starting there is skipped
    assert [w.past[0, 0] for w in ws] == [1.0, 2.0, 2.0]
    assert ws[1].past[:, 0].tolist() == [2.0, 2.0, 4.0, 5.0]
    assert m.prep_report["train"]["windows_with_gaps"] == 1


def test_no_window_leaks_across_the_train_validation_cut(host):
    recs = rows(range(20))
    train, val = recs[:14], recs[14:]
    # a late training row and validation rows at or before the end of training
    val = [{"time": 13 * H, "series": "s", "value": 999.0}, {"time": 5 * H, "series": "s", "value": 999.0}] + val
    m = lstm(host)
    m.fit(train)
    train_windows = [Window.from_record(r) for r in m.examples(train, "train")]
    with pytest.warns(TimeSeriesWarning, match="2 rows were dropped: not strictly after the end of training"):
        val_windows = [Window.from_record(r) for r in m.examples(val, "val")]
    assert max(w.future.max() for w in train_windows) == 13.0
    assert all(w.past.min() >= 14.0 for w in val_windows)
    assert len(val_windows) == 1  # rows 14..19: exactly one window of 4 + 2


def test_validation_split_without_a_full_window_is_an_error_that_explains_how_to_split(host):
    recs = rows(range(20))
    m = lstm(host)
    m.fit(recs[:15])
    interleaved = [recs[i] for i in (16, 18)]
    with pytest.raises(DataError, match=r"validation split has no full window: it needs at least 6 rows "
                                        r"per series \(input_length 4 \+ horizon 2\); its longest series "
                                        r"'s' has 2; .*data.split.*\{method: ordered\}"):
        list(m.examples(interleaved, "val"))


@pytest.mark.filterwarnings("ignore::privet_timeseries.models.base.TimeSeriesWarning")
def test_validation_rows_all_inside_the_training_period_are_an_error_not_an_empty_split(host):
    recs = rows(range(20))
    m = lstm(host)
    m.fit(recs)
    with pytest.raises(DataError, match=r"validation split has no full window: .* it has 0 \(3 of its "
                                        r"rows were dropped for not being after the end of training"):
        list(m.examples(recs[5:8], "val"))


@pytest.mark.filterwarnings("ignore::privet_timeseries.models.base.TimeSeriesWarning")
def test_windows_all_skipped_for_gaps_say_so(host):
    recs = rows(range(20))
    m = lstm(host, fill="none")
    m.fit(recs[:10])
    val = rows([10, None, 12, None, 14, None, 16], start=10 * H)
    with pytest.raises(DataError, match=r"longest series 's' has 7 rows, but its windows were skipped "
                                        r"\(2 with a gap left after filling\)"):
        list(m.examples(val, "val"))


def test_a_split_given_no_rows_is_not_an_error(host):
    recs = rows(range(20))
    m = lstm(host)
    m.fit(recs)
    assert list(m.examples([], "val")) == [] and list(m.examples([], "test")) == []


def test_too_short_training_series_is_a_clear_error(host):
    recs = rows(range(5))
    m = lstm(host)
    m.fit(recs)
    with pytest.raises(DataError, match=r"training split has no full window: it needs at least 6 rows "
                                        r"per series .* has 5; lower input_length/horizon"):
        list(m.examples(recs, "train"))


def test_inputs_over_1024_steps_warn_of_vanishing_gradients(host):
    with pytest.warns(LongSequenceWarning, match="vanishing gradients"):
        lstm(host, input_length=1500)


def test_encode_drops_non_finite_and_malformed_windows(host):
    recs = rows(range(8))
    m = lstm(host)
    m.fit(recs)
    ex = next(iter(m.examples(recs, "train")))
    poisoned = Window.from_record(ex)
    poisoned.past = poisoned.past.copy()
    poisoned.past[1, 0] = np.nan
    with pytest.raises(DropRecord) as info:
        m.encode(poisoned.to_record(ex))
    assert info.value.reason == "non_finite_window"
    with pytest.raises(DropRecord) as info:
        m.encode({**ex, "window": b"\x00" * 12})
    assert info.value.reason == "bad_window"


def test_features_and_known_covariates_are_resolved_at_fit(host):
    recs = [dict(r, temp=float(i), cal_hour_sin=0.5, label_text="x") for i, r in enumerate(rows(range(10)))]
    m = lstm(host)
    m.fit(recs)
    assert (m.state["features"], m.state["known"]) == (["temp"], ["cal_hour_sin"])
    ex = next(iter(m.examples(recs, "train")))
    w = Window.from_record(ex)
    assert w.past.shape == (4, 2) and w.known.shape == (6, 1) and w.future.shape == (2, 1)
    with pytest.raises(DataError, match="target.*'load' not in the records"):
        lstm(host, targets=["load"]).fit(recs)


def test_predict_split_forecasts_past_the_last_observed_target(host):
    recs = [dict(r, cal_x=float(i)) for i, r in enumerate(rows(list(range(10)) + [None, None]))]
    m = lstm(host)
    m.fit(recs[:10])
    [ex] = list(m.examples(recs, "predict"))
    w = Window.from_record(ex)
    assert ex["time"] == 10 * H
    assert w.past[:, 0].tolist() == [6.0, 7.0, 8.0, 9.0]
    assert w.known[:, 0].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]  # known for the horizon too
    with pytest.warns(TimeSeriesWarning, match="known covariates are missing for the horizon"):
        assert list(m.examples(recs[:11], "predict")) == []


def test_the_horizons_observed_features_are_stored_but_never_read(host):
    """A window is its rows; the future's observed covariates (unknown at forecast time)
    sit in the bytes but reach neither the finiteness check nor the batch."""
    recs = [dict(r, temp=float(i)) for i, r in enumerate(rows(range(12)))]
    recs[5]["temp"] = None  # in the horizon of the first window only: it is not dropped
    m = lstm(host, fill="none")
    m.fit(recs)
    exs = list(m.examples(recs, "train"))
    first = exs[0]
    assert np.isnan(np.frombuffer(first["window"], "<f4")).any()  # the horizon's temp is stored
    batch = m.collate([m.encode(first)])
    assert torch_isfinite(batch["past"]) and torch_isfinite(batch["future"])
    assert batch["past"][0, :, 1].tolist() == [0.0, 1.0, 2.0, 3.0]  # temp up to the cut
    assert batch["future"][0, :, 0].tolist() == [4.0, 5.0]


def torch_isfinite(t):
    import torch

    return bool(torch.isfinite(t).all())


def test_the_example_cache_grows_with_the_rows_not_with_the_window_length(host, tmp_path):
    """Stride 1, 60-row windows: stored whole they would be 60 copies of each row."""
    from privet.data.arrow import ArrowShardWriter, ArrowTable

    recs = [dict(r, temp=float(i % 7), cal_x=float(i % 24)) for i, r in enumerate(rows(np.sin(np.arange(4000) / 10.0)))]
    m = lstm(host, input_length=48, horizon=12)
    m.fit(recs)
    writer = ArrowShardWriter(tmp_path, "train", shard_rows=1000)
    for table in m.example_tables(recs, "train"):
        writer.add_table(table)
    files = writer.close()
    on_disk = sum((tmp_path / f).stat().st_size for f in files)
    whole = (4000 - 59) * 60 * 3 * 4  # 60 rows of 3 float32 per window
    assert on_disk < whole / 6  # each row about once, plus 16 bytes of view and the other fields
    table = ArrowTable(files)
    assert table.num_rows == 4000 - 60 + 1
    w = Window.from_record(table.rows([2500])[0])
    assert np.allclose(w.past[:, 0], np.sin(np.arange(2500, 2548) / 10.0), atol=1e-6)
    assert np.allclose(w.future[:, 0], np.sin(np.arange(2548, 2560) / 10.0), atol=1e-6)
