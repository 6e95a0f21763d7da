"""The columnar path of the fitted cleaners: ``clean_table`` gives what ``clean`` gives
each record (values, column order, counters), and fitting on tables gives the state that
fitting on the same records as dicts gives."""

from __future__ import annotations

import datetime as dt
import math
import pickle
import zoneinfo
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from privet import DataError, RecordStream
from privet_timeseries import ColumnScaler
from privet_timeseries.impute import Impute
from privet_timeseries.outliers import Outliers
from privet_timeseries.scaling import Scale
from privet_timeseries.stats import RESERVOIR, RunningStats

START = 1711843200.0  # 2024-03-31 00:00 UTC: Europe's summer time starts an hour later


def make_rows(n: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """Three series and rows without one, gaps, outliers, an int column and an all-null column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        v = float(rng.normal(10.0 * (i % 4), 2.0))
        if i % 17 == 0:
            v = None
        elif i % 29 == 0:
            v = 500.0
        count = None if i % 13 == 0 else int(rng.integers(0, 100))
        if i % 31 == 0:
            count = 10_000
        rows.append({"time": START + 1800.0 * i, "series": ["a", "b", "c", None][i % 4],
                     "v": v, "count": count, "empty": None})
    return rows


def with_non_finite(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with NaN and infinity in ``v`` (a table from a dict list may hold them)."""
    out = [dict(r) for r in rows]
    for i, r in enumerate(out):
        if i % 23 == 5:
            r["v"] = float("nan")
        elif i % 23 == 9:
            r["v"] = float("-inf")
    return out


def stream(rows: list[dict[str, Any]]) -> RecordStream:
    """The records as the engine hands them over: two Arrow tables."""
    cut = len(rows) // 3
    first, second = pa.Table.from_pylist(rows[:cut]), pa.Table.from_pylist(rows[cut:])
    return RecordStream(lambda: [first, second])


def same_value(got: Any, want: Any, tol: float) -> bool:
    if isinstance(want, float) and isinstance(got, (int, float)):
        if math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        return got == want if tol == 0 or math.isinf(want) else abs(got - want) <= tol
    return got == want and type(got) is type(want)


def assert_same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]], tol: float = 0.0) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert list(g) == list(w), f"row {i}: keys differ"
        bad = {k: (g[k], w[k]) for k in w if not same_value(g[k], w[k], tol)}
        assert not bad, f"row {i}: {bad}"


def assert_table_path_matches(host: Any, name: str, options: dict[str, Any], train: Any,
                              rows: list[dict[str, Any]], tol: float = 0.0) -> Any:
    """Clean ``rows`` as one table with one cleaner and record by record with another
    (fitted alike); the values, key order, Arrow types and counters must agree."""
    by_table, by_record = host.make("cleaner", name, options), host.make("cleaner", name, options)
    if by_table.needs_fit:
        by_table.fit(train)
        by_record.fit(train)
    table = pa.Table.from_pylist(rows)
    want = [by_record.clean(dict(r)) for r in table.to_pylist()]
    got = by_table.clean_table(table)
    assert got is not None, f"{name} declined"
    assert got.num_rows == len(rows)
    assert got.column_names == list(want[0])
    stored = pa.Table.from_pylist(want)  # the record path's results as Arrow holds them
    assert_same_rows(got.to_pylist(), stored.to_pylist(), tol)
    for field in stored.schema:
        if not pa.types.is_null(field.type):
            assert got.schema.field(field.name).type == field.type, field.name
    assert by_table.report() == by_record.report()
    return by_table


def assert_close_state(a: Any, b: Any, path: str = "") -> None:
    """Nested dicts/lists of the same shape with numbers equal to 1e-9 (relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_close_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_state(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


# -- outliers -------------------------------------------------------------------------------

def test_outliers_clip_table_matches_records_per_series(host):
    train = make_rows(600, seed=1)
    cleaner = assert_table_path_matches(host, "timeseries.outliers", {"per_series": True}, train,
                                        with_non_finite(make_rows(300, seed=2)))
    report = cleaner.report()
    assert report["clipped.v"] >= 10 and report["clipped.count"] >= 9  # 500.0 and 10_000 rows
    assert set(cleaner.bounds) == {"count", "v"}  # the null and reserved columns are not bounded


def test_outliers_clip_of_an_int_column_becomes_float_only_where_clipped(host):
    cleaner = host.make("cleaner", "timeseries.outliers", {"method": "iqr", "columns": ["count"]})
    cleaner.fit([{"count": c} for c in (10, 11, 12, 13, 14, 15)])
    calm = pa.table({"count": pa.array([11, None, 14], pa.int64())})
    assert cleaner.clean_table(calm).equals(calm)  # nothing clipped: still int64
    wild = cleaner.clean_table(pa.table({"count": pa.array([11, None, 1000], pa.int64())}))
    lo, hi = cleaner.bounds["count"]["global"]
    assert wild.schema.field("count").type == pa.float64()
    assert wild.column("count").to_pylist() == [11.0, None, hi] and hi == pytest.approx(17.5)  # quartiles 11.25, 13.75
    assert cleaner.report() == {"clipped.count": 1}


def test_outliers_drop_declines_only_when_a_row_would_be_dropped(host):
    train = make_rows(600, seed=1)
    drop = host.make("cleaner", "timeseries.outliers", {"action": "drop", "per_series": True})
    drop.fit(train)
    wild = pa.Table.from_pylist(make_rows(100, seed=3))  # holds 500.0 and 10_000
    assert drop.clean_table(wild) is None
    assert drop.report() == {}  # the record path counts the drops
    calm_rows = [r for r in make_rows(100, seed=3) if r["v"] != 500.0 and r["count"] != 10_000]
    calm = pa.Table.from_pylist(calm_rows)
    assert drop.clean_table(calm).equals(calm)
    assert [drop.clean(dict(r)) for r in calm_rows] == calm_rows


def test_outliers_fit_on_tables_equals_fit_on_dicts(host):
    rows = make_rows(900, seed=4)
    for options in ({"per_series": True}, {"method": "iqr", "per_series": True, "k": 2.0}):
        from_dicts = host.make("cleaner", "timeseries.outliers", options)
        from_dicts.fit(rows)
        from_tables = host.make("cleaner", "timeseries.outliers", options)
        from_tables.fit(stream(rows))
        assert_close_state(from_dicts.state_dict(), from_tables.state_dict())
        assert set(from_dicts.bounds["v"]["series"]) == {"a", "b", "c"}
    values = np.array([r["v"] for r in rows if r["v"] is not None and r["series"] == "b"])
    lo, hi = from_dicts.bounds["v"]["series"]["b"]
    q1, q3 = np.quantile(values, [0.25, 0.75])
    assert (lo, hi) == pytest.approx((q1 - 2 * (q3 - q1), q3 + 2 * (q3 - q1)))


# -- impute ---------------------------------------------------------------------------------

def test_impute_table_matches_records_with_indicators(host):
    train = make_rows(600, seed=5)
    rows = with_non_finite(make_rows(300, seed=6))
    for options in ({"indicator": True}, {"method": "median", "per_series": True, "indicator": True}):
        cleaner = assert_table_path_matches(host, "timeseries.impute", options, train, rows)
        report = cleaner.report()
        assert report["imputed.v"] == sum(1 for r in rows if r["v"] is None or not math.isfinite(r["v"]))
        assert report["imputed.count"] == sum(1 for r in rows if r["count"] is None)


def test_impute_fills_null_typed_text_and_absent_columns_in_clean_order(host):
    train = [{"v": 1.0, "note": "x", "ghost": 2.0, "empty": None},
             {"v": 3.0, "note": "y", "ghost": 4.0, "empty": None}]
    options = {"method": "constant", "value": -1.0, "columns": ["ghost", "v", "empty", "note"],
               "indicator": True}
    rows = [{"v": None, "note": "z", "empty": None}, {"v": 2.0, "note": None, "empty": None}]
    cleaner = assert_table_path_matches(host, "timeseries.impute", options, train, rows)
    out = cleaner.clean_table(pa.Table.from_pylist(rows))
    assert out.column_names == ["v", "note", "empty", "ghost", "ghost_missing", "v_missing",
                                "empty_missing", "note_missing"]
    assert out.column("note").to_pylist() == [-1.0, -1.0]  # text is no number: filled
    assert out.column("v").to_pylist() == [-1.0, 2.0]


def test_impute_int_column_stays_int_without_gaps(host):
    cleaner = host.make("cleaner", "timeseries.impute", {"columns": ["count"]})
    cleaner.fit([{"count": 1}, {"count": 4}])
    full = pa.table({"count": pa.array([3, 5], pa.int64())})
    assert cleaner.clean_table(full).equals(full)
    gappy = cleaner.clean_table(pa.table({"count": pa.array([3, None], pa.int64())}))
    assert gappy.column("count").to_pylist() == [3.0, 2.5] and gappy.schema.field("count").type == pa.float64()
    assert cleaner.report() == {"imputed.count": 1}


def test_impute_fit_on_tables_equals_fit_on_dicts(host):
    rows = make_rows(700, seed=7)
    options = {"method": "median", "per_series": True}
    from_dicts = host.make("cleaner", "timeseries.impute", options)
    from_dicts.fit(rows)
    from_tables = host.make("cleaner", "timeseries.impute", options)
    from_tables.fit(stream(rows))
    assert_close_state(from_dicts.state_dict(), from_tables.state_dict())
    counts = [r["count"] for r in rows if r["count"] is not None and r["series"] == "c"]
    assert from_tables.fill["count"]["series"]["c"] == float(np.median(counts))
    assert set(from_tables.fill) == {"count", "v"}


def test_fit_refuses_a_named_column_missing_from_the_tables(host):
    cleaner = host.make("cleaner", "timeseries.impute", {"columns": ["v", "nope"]})
    with pytest.raises(DataError, match=r"column\(s\) 'nope' not found in the training records "
                                        r"\(fields: count, empty, series, time, v\)"):
        cleaner.fit(stream(make_rows(30)))


def test_fit_discovers_only_columns_that_hold_a_number(host):
    rows = [{"v": 1.0, "flag": True, "text": "a", "late": None, "series": "s", "time": 0.0},
            {"v": 2.0, "flag": False, "text": "b", "late": None, "series": "s", "time": 1.0}]
    later = [{"v": 3.0, "flag": True, "text": "c", "late": 7.0, "series": "s", "time": 2.0}]
    early = pa.Table.from_pylist(rows).set_column(3, "late", pa.array([None, None], pa.float64()))
    cleaner = host.make("cleaner", "timeseries.scale", {})
    cleaner.fit(RecordStream(lambda: [early]))
    assert list(cleaner.scaler.columns) == ["v"]  # a float column of nulls holds no number
    cleaner.fit(RecordStream(lambda: [early, pa.Table.from_pylist(later)]))
    assert list(cleaner.scaler.columns) == ["late", "v"]


# -- scale ----------------------------------------------------------------------------------

def test_scale_table_matches_records(host):
    train = make_rows(600, seed=8)
    rows = with_non_finite(make_rows(300, seed=9))
    for options in ({"per_series": True}, {"method": "robust", "per_series": True}, {"method": "minmax"}):
        cleaner = assert_table_path_matches(host, "timeseries.scale", options, train, rows)
    assert cleaner.report() == {"non_finite.v": sum(1 for r in rows if r["v"] is not None
                                                    and not math.isfinite(r["v"]))}


def test_scale_nulls_and_counts_text_in_a_named_column(host):
    train = [{"v": 1.0, "note": "x"}, {"v": 3.0, "note": "y"}]
    rows = [{"v": 2.0, "note": "z"}, {"v": None, "note": None}, {"v": 5.0, "note": "w"}]
    cleaner = assert_table_path_matches(host, "timeseries.scale", {"columns": ["v", "note"]}, train, rows)
    assert cleaner.report() == {"non_finite.note": 2}
    out = cleaner.clean_table(pa.Table.from_pylist(rows))
    assert out.column("v").to_pylist() == [0.0, None, 3.0] and out.column("note").null_count == 3


def test_scale_fit_on_tables_equals_fit_on_dicts_and_numpy(host):
    rows = make_rows(800, seed=10)
    from_dicts = host.make("cleaner", "timeseries.scale", {"per_series": True})
    from_dicts.fit(rows)
    from_tables = host.make("cleaner", "timeseries.scale", {"per_series": True})
    from_tables.fit(stream(rows))
    assert_close_state(from_dicts.state_dict(), from_tables.state_dict())
    values = np.array([r["v"] for r in rows if r["v"] is not None and r["series"] == "a"])
    loc, scale = from_tables.scaler.loc_scale("v", "a")
    assert (loc, scale) == pytest.approx((values.mean(), values.std()))
    assert from_tables.scaler.loc_scale("count") == pytest.approx(
        (np.mean([r["count"] for r in rows if r["count"] is not None]),
         np.std([r["count"] for r in rows if r["count"] is not None])))


def test_column_scaler_observe_many_equals_observe():
    rng = np.random.default_rng(11)
    values = rng.normal(5.0, 3.0, 500)
    values[::37] = np.nan
    series = np.array([None if i % 9 == 0 else f"s{i % 3}" for i in range(500)], dtype=object)
    series[7] = "lonely"  # one value only: falls back to the global parameters
    for method in ("standard", "minmax", "robust"):
        one, many = ColumnScaler(method, per_series=True), ColumnScaler(method, per_series=True)
        for v, s in zip(values, series):
            if math.isfinite(v):
                one.observe("y", float(v), s)
        many.observe_many("y", values[:200], series[:200])
        many.observe_many("y", values[200:], series[200:])
        one.finish(["y"])
        many.finish(["y"])
        assert_close_state(one.state_dict(), many.state_dict())
        assert "lonely" not in many.columns["y"]["series"] and set(many.columns["y"]["series"]) == {"s0", "s1", "s2"}
    glob = ColumnScaler("standard", per_series=False)
    glob.observe_many("y", values, series)
    glob.finish()
    assert glob.columns["y"]["series"] == {}
    assert glob.loc_scale("y") == pytest.approx((np.nanmean(values), np.nanstd(values)))


# -- calendar -------------------------------------------------------------------------------

ALL_FEATURES = ["minute", "hour", "day_of_week", "day_of_month", "day_of_year", "week_of_year",
                "month", "quarter", "is_weekend"]


def calendar_rows() -> list[dict[str, Any]]:
    """DST changes, new years with ISO weeks of the previous year, leap days, times before
    1970, and fractions that round to the next minute as ``timedelta`` rounds them."""
    rows = [{"time": START + 600.0 * i + 0.25, "v": float(i)} for i in range(400)]
    for year in (1969, 2020, 2021, 2024, 2026, 2027):
        jan1 = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc).timestamp()
        rows += [{"time": jan1 + 86400.0 * d - 3600.0 * h, "v": 0.0} for d in range(-4, 4) for h in (0, 1, 10)]
    rows += [{"time": t, "v": 1.0} for t in (59.9999996, 59.9999994, -0.0000005, 1709164800.0,  # leap day
                                              -1e9, 1e10, 1697936399.9999999, 0.0000015)]
    return rows


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Paris", "Asia/Kolkata", "America/New_York"])
def test_calendar_table_matches_records(host, timezone):
    rows = calendar_rows()
    for cyclical in (True, False):
        options = {"features": ALL_FEATURES, "cyclical": cyclical, "timezone": timezone}
        assert_table_path_matches(host, "timeseries.calendar", options, None, rows, tol=1e-12)


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Paris"])
def test_calendar_table_matches_records_for_dense_rows(host, timezone):
    """Rows a few days apart at most (what a shard of hourly data holds): the date
    features come from a table of the days they span; the same values as per record,
    across a new year with an ISO week of the previous year, a leap day and a DST change."""
    start = dt.datetime(2026, 12, 24, tzinfo=dt.timezone.utc).timestamp()
    rows = [{"time": start + 3600.0 * h + 0.5, "v": 0.0} for h in range(0, 24 * 40, 5)]
    leap = dt.datetime(2028, 2, 27, tzinfo=dt.timezone.utc).timestamp()
    rows += [{"time": leap + 1800.0 * h, "v": 1.0} for h in range(24 * 6)]
    options = {"features": ALL_FEATURES, "cyclical": False, "timezone": timezone}
    assert_table_path_matches(host, "timeseries.calendar", options, None, rows, tol=0)


def test_calendar_table_overwrites_existing_features_in_place(host):
    cal = host.make("cleaner", "timeseries.calendar", {"features": ["month", "hour"], "cyclical": False})
    table = pa.table({"cal_hour": pa.array(["old"]), "time": pa.array([1704564000], pa.int64())})
    out = cal.clean_table(table)
    assert out.column_names == ["cal_hour", "time", "cal_month"]
    assert out.to_pylist() == [{"cal_hour": 18.0, "time": 1704564000, "cal_month": 0.0}]


def test_calendar_declines_missing_or_unusable_times(host):
    cal = host.make("cleaner", "timeseries.calendar", {})
    assert cal.clean_table(pa.table({"time": [START, None]})) is None
    assert cal.clean_table(pa.table({"time": [START, float("nan")]})) is None
    assert cal.clean_table(pa.table({"time": ["2024-01-01"]})) is None
    assert cal.clean_table(pa.table({"v": [1.0]})) is None
    assert cal.clean_table(pa.table({"time": [1e15]})) is None  # beyond year 9999
    assert cal.clean_table(pa.table({"time": [START]})).column_names == [
        "time", "cal_hour_sin", "cal_hour_cos", "cal_day_of_week_sin", "cal_day_of_week_cos",
        "cal_month_sin", "cal_month_cos"]


def test_calendar_local_hours_follow_the_timezone_database(host):
    cal = host.make("cleaner", "timeseries.calendar", {"features": ["hour"], "cyclical": False,
                                                       "timezone": "Europe/Paris"})
    times = [START + 3600.0 * h for h in range(4)]  # 01:00 UTC: clocks go from 02:00 to 03:00
    out = cal.clean_table(pa.table({"time": times}))
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert out.column("cal_hour").to_pylist() == [1.0, 3.0, 4.0, 5.0]
    assert [float(dt.datetime.fromtimestamp(t, paris).hour) for t in times] == [1.0, 3.0, 4.0, 5.0]


def test_calendar_after_2037_follows_zoneinfo_summer_times(host):
    """Arrow's zone data may stop at 2037 where zoneinfo continues the summer-time rule:
    the table path must still give what clean gives (a whole year, winter to winter)."""
    jan = dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    rows = [{"time": jan + 6 * 3600.0 * i + 0.5} for i in range(4 * 366)]
    options = {"features": ["hour", "day_of_year"], "cyclical": False, "timezone": "Europe/Paris"}
    cal = assert_table_path_matches(host, "timeseries.calendar", options, None, rows)
    july = dt.datetime(2040, 7, 1, 12, tzinfo=dt.timezone.utc).timestamp()
    assert cal.clean_table(pa.table({"time": [july]})).column("cal_hour").to_pylist() == [14.0]


# -- fitting by parts (fit_table / fit_merge) -------------------------------------------------

def _batches(seed: int, sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.0, n) for n in sizes]


def test_merging_the_stats_of_batches_equals_adding_the_batches_in_turn():
    batches = _batches(0, [700, 1, 3000, 250])
    sequential = RunningStats()
    merged = RunningStats()
    for b in batches:
        sequential.add_many(b)
        part = RunningStats()
        part.add_many(b)
        merged.merge(pickle.loads(pickle.dumps(part)))  # a part crosses processes pickled
    assert (merged.count, merged.mean, merged.std, merged.min, merged.max) == \
        (sequential.count, sequential.mean, sequential.std, sequential.min, sequential.max)
    for q in (0.1, 0.5, 0.75):  # every value is in both samples: exact quantiles
        assert merged.quantile(q) == sequential.quantile(q) == np.quantile(np.concatenate(batches), q)
    merged.merge(RunningStats())  # an empty part changes nothing
    assert merged.count == sequential.count


def test_merged_reservoirs_beyond_their_size_are_deterministic_and_close():
    batches = _batches(1, [RESERVOIR // 2, RESERVOIR, RESERVOIR // 3, 2 * RESERVOIR])

    def merged() -> RunningStats:
        total = RunningStats()
        for b in batches:
            part = RunningStats()
            part.add_many(b)
            total.merge(part)
        return total

    a, b = merged(), merged()
    assert a.quantile(0.5) == b.quantile(0.5) and a.quantile(0.9) == b.quantile(0.9)
    values = np.concatenate(batches)
    assert a.count == len(values) and a.mean == pytest.approx(values.mean(), rel=1e-12)
    for q in (0.25, 0.5, 0.75):
        assert a.quantile(q) == pytest.approx(np.quantile(values, q), abs=0.05)
    assert len(a._sample) == RESERVOIR


def test_stats_without_quantiles_keep_no_sample():
    stats = RunningStats(quantiles=False)
    stats.add_many(np.arange(10.0))
    stats.add(20.0)
    other = RunningStats(quantiles=False)
    other.add_many(np.array([-1.0]))
    stats.merge(other)
    assert (stats.count, stats.min, stats.max) == (12, -1.0, 20.0)
    assert len(stats._sample) == 0 and len(pickle.dumps(stats)) < 400


@pytest.mark.parametrize("cleaner", [
    lambda: Outliers(Outliers.Options(method="iqr", per_series=True)),
    lambda: Outliers(Outliers.Options(method="sigma", action="drop")),
    lambda: Impute(Impute.Options(method="median", per_series=True)),
    lambda: Impute(Impute.Options(method="mean")),
    lambda: Scale(Scale.Options(method="robust", per_series=True)),
    lambda: Scale(Scale.Options(method="minmax")),
], ids=["outliers-iqr", "outliers-sigma", "impute-median", "impute-mean", "scale-robust", "scale-minmax"])
def test_fitting_by_pickled_parts_gives_the_state_of_fit(cleaner):
    rows = make_rows(600)
    direct = cleaner()
    direct.fit(stream(rows))
    by_parts = cleaner()
    tables = [pa.Table.from_pylist(rows[i:i + 150]) for i in range(0, len(rows), 150)]
    by_parts.fit_merge(pickle.loads(pickle.dumps(by_parts.fit_table(t))) for t in tables)
    assert_close_state(direct.state_dict(), by_parts.state_dict())
    assert by_parts.state_dict() != {}


def test_a_named_column_missing_from_every_part_is_still_an_error():
    cleaner = Impute(Impute.Options(columns=["nope"]))
    table = pa.Table.from_pylist(make_rows(20))
    with pytest.raises(DataError, match="'nope' not found"):
        cleaner.fit_merge([cleaner.fit_table(table)])
