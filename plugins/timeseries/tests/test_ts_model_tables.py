"""The window models and the MLP fit and window from Arrow tables (``privet.record_tables``)
exactly as they do from dicts: same state, same windows (same order, same bytes)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import privet
from privet import DataError
from privet_timeseries.series import Series, SeriesCollector
from privet_timeseries.windows import Window, make_windows, shape_text

H = 3600.0
KEYS = ["time", "series", "value", "temp", "count", "cal_hour", "note", "flag", "label", "y"]


def rows(seed: int = 0) -> list[dict[str, Any]]:
    """Three series with gaps (skipped hours, missing values), duplicated and unsorted
    rows, rows without a time, an int column, a text and a bool column; every record has
    every key (``pa.Table.from_pylist`` takes its columns from the first row)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, n in (("north", 90), ("south", 70), ("west", 40)):
        for i in range(n):
            if i % 17 == 4:
                continue  # a skipped hour
            out.append({
                "time": i * H if i % 23 != 7 else None,
                "series": name,
                "value": float(rng.normal(10 if name == "north" else -5, 2)) if i % 11 != 3 else None,
                "temp": float(rng.normal()) if i % 13 != 5 else math.nan,
                "count": int(i % 7),
                "cal_hour": float(np.sin(2 * np.pi * i / 24)),
                "note": f"n{i % 3}",
                "flag": bool(i % 2),
                "label": ["calm", "storm", "fog"][i % 3] if i % 19 != 2 else None,
                "y": float(rng.normal(3.0, 0.5)) if i % 9 != 1 else None,
            })
    order = list(range(len(out)))
    order[10:40] = order[10:40][::-1]  # unsorted rows within a series
    out = [out[i] for i in order]
    out.append(dict(out[5]))  # a duplicated timestamp
    return out


def stream(records: list[dict[str, Any]]) -> Any:
    """The engine's view of ``records``: a RecordStream of two tables."""
    half = len(records) // 2
    tables = [pa.Table.from_pylist(records[:half]), pa.Table.from_pylist(records[half:])]
    assert tables[0].column_names == KEYS
    return privet.RecordStream(lambda: tables)


def later(records: list[dict[str, Any]], shift: float) -> list[dict[str, Any]]:
    """A validation split: the rows moved ``shift`` later, but every fifth row kept (so some
    rows are not after the end of training)."""
    out = []
    for i, rec in enumerate(records):
        moved = rec["time"] is not None and i % 5
        out.append(dict(rec, time=rec["time"] + shift) if moved else dict(rec))
    return out


def assert_close(a: Any, b: Any, path: str = "state") -> None:
    """Equal JSON-like values, floats to 1e-9 (numpy sums in another order), same key order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b and type(a) is type(b), path


TASKS = {
    "forecast": {"input_length": 6, "horizon": 2, "exclude": ["y"]},
    "forecast_grid": {"input_length": 5, "horizon": 3, "frequency": "1h", "fill": "ffill",
                      "stride": 2, "targets": ["value", "temp"], "target_scaling": "robust",
                      "duplicates": "last", "known_features": [], "exclude": ["y"]},
    "classification": {"task": "classification", "input_length": 5, "horizon": 1, "exclude": ["y"]},
    "regression": {"task": "regression", "label": "y", "input_length": 4, "horizon": 1,
                   "fill": "bfill", "scale_per_series": False},
}


@pytest.mark.parametrize("task", list(TASKS))
def test_window_model_fits_and_windows_tables_as_it_does_dicts(host, task):
    records = rows()
    val = later(records, 200 * H)
    by_dicts = host.make("model", "timeseries.lstm", TASKS[task])
    by_tables = host.make("model", "timeseries.lstm", TASKS[task])
    with pytest.warns(UserWarning):
        by_dicts.fit(records)
        by_tables.fit(stream(records))
        assert_close(by_dicts.state_dict(), by_tables.state_dict())
        for split, data in (("train", records), ("val", val), ("predict", records)):
            expected = list(by_dicts.examples(data, split))
            got = list(by_tables.examples(stream(data), split))
            assert [e["window"] for e in got] == [e["window"] for e in expected], split
            assert got == expected, split
            assert by_tables.prep_report[split] == by_dicts.prep_report[split]
    report = by_tables.prep_report
    assert report["train"]["rows_without_time"] == 9 and report["train"]["windows"] > 20
    assert report["val"]["rows_not_after_training"] > 0 and report["val"]["windows"] > 10
    state = by_tables.state
    assert list(state["train_end"]) == ["north", "south", "west"]  # first-seen order, as dicts
    assert state["train_end"] == {"north": 88 * H, "south": 69 * H, "west": 39 * H}  # north: hour 89 skipped


def test_fitted_state_follows_the_record_rules(host):
    """What the columns give, checked against numbers computed from the dicts by hand."""
    records = rows(1)
    model = host.make("model", "timeseries.lstm", {"input_length": 6, "horizon": 2,
                                                   "task": "classification"})
    model.fit(stream(records))
    st = model.state

    def finite(key: str, series: str | None = None) -> np.ndarray:
        vals = [r[key] for r in records if series in (None, r["series"])]
        x = np.array([v for v in vals if v is not None], float)
        return x[np.isfinite(x)]

    # numbers only (no text, no bool), the label and the bookkeeping keys left out
    assert st["features"] == ["count", "temp", "y"] and st["known"] == ["cal_hour"]
    for (loc, scale), key in zip(st["feature_scaling"], st["features"]):
        assert loc == pytest.approx(finite(key).mean()) and scale == pytest.approx(finite(key).std())
    scaler = st["target_scaler"]["columns"]["value"]
    assert scaler["global"] == pytest.approx([finite("value").mean(), finite("value").std()])
    for name in ("north", "south", "west"):
        x = finite("value", name)
        assert scaler["series"][name] == pytest.approx([x.mean(), x.std()])
    assert st["labels"] == ["calm", "fog", "storm"]
    assert st["series"] == ["north", "south", "west"]


def test_series_names_and_labels_are_the_text_of_any_value(host):
    """Int series ids become "1", "2"; float labels 1.0 and int-like text count as one class."""
    records = [{"time": float(i), "series": i % 2 + 1, "value": float(i), "label": float(i % 3)}
               for i in range(40)]
    model = host.make("model", "timeseries.lstm", {"input_length": 3, "horizon": 1,
                                                   "task": "classification"})
    table = pa.Table.from_pylist(records)
    assert table.schema.field("series").type == pa.int64()
    model.fit(privet.RecordStream(lambda: [table]))
    assert model.state["series"] == ["1", "2"]
    assert model.state["train_end"] == {"1": 38.0, "2": 39.0}
    assert model.state["labels"] == ["0", "1", "2"]
    windows = list(model.examples(privet.RecordStream(lambda: [table]), "train"))
    assert windows == list(model.examples(records, "train"))
    assert {w["series"] for w in windows} == {"1", "2"} and {w["label"] for w in windows} == {0.0, 1.0, 2.0}


def test_fit_errors_are_those_of_the_record_path(host):
    model = host.make("model", "timeseries.lstm", {"input_length": 3, "horizon": 1})
    with pytest.raises(DataError, match="no training records"):
        model.fit(privet.RecordStream(lambda: []))
    no_time = pa.Table.from_pylist([{"series": "a", "value": 1.0}])
    with pytest.raises(DataError, match="have no 'time' field"):
        model.fit(privet.RecordStream(lambda: [no_time]))
    no_target = pa.Table.from_pylist([{"time": 1.0, "level": 1.0}])
    with pytest.raises(DataError, match=r"target\(s\) 'value' not in the records \(fields: level, time\)"):
        model.fit(privet.RecordStream(lambda: [no_target]))
    one_class = pa.Table.from_pylist([{"time": 1.0, "value": 1.0, "label": "x"}])
    clf = host.make("model", "timeseries.lstm", {"input_length": 3, "horizon": 1, "task": "classification"})
    with pytest.raises(DataError, match="at least 2 classes .* found 1"):
        clf.fit(privet.RecordStream(lambda: [one_class]))


# -- the collector ------------------------------------------------------------------------------

def collected(collector: SeriesCollector) -> list[tuple[str, list[float], list[list[float]], Any]]:
    return [(s.name, s.times.tolist(), np.nan_to_num(s.values, nan=-999.0).tolist(), s.labels)
            for s in collector.series()]


def test_add_table_collects_what_add_collects():
    records = [
        {"time": 5, "series": "a", "x": 1, "y": "text", "label": "p"},
        {"time": 1.5, "series": "b", "x": 2.5, "y": None, "label": None},
        {"time": None, "series": "a", "x": 3.0, "y": 1.0, "label": "q"},
        {"time": math.nan, "series": "a", "x": 3.0, "y": 1.0, "label": "q"},
        {"time": 2.0, "series": None, "x": None, "y": 2.0, "label": "r"},
        {"time": 0.5, "series": "a", "x": math.inf, "y": 3.0, "label": "s"},  # not after training
        {"time": 7.0, "series": "a", "x": 4.0, "y": 4.0, "label": "t"},
        {"time": 6.0, "series": "b", "x": 5.0, "y": 5.0, "label": "u"},
    ]
    guard = {"a": 1.0, "c": 100.0}
    by_dicts = SeriesCollector(["x", "y", "absent"], label="label", not_before=guard).extend(records)
    by_table = SeriesCollector(["x", "y", "absent"], label="label", not_before=guard)
    by_table.add_table(privet.record_tables(records).__next__())
    got = collected(by_table)  # series() hands the rows over: the collector is empty after
    assert got == collected(by_dicts)
    assert list(by_table.series()) == []
    assert got == [
        ("None", [2.0], [[-999.0, 2.0, -999.0]], ["r"]),
        ("a", [5.0, 7.0], [[1.0, -999.0, -999.0], [4.0, 4.0, -999.0]], ["p", "t"]),
        ("b", [1.5, 6.0], [[2.5, -999.0, -999.0], [5.0, 5.0, -999.0]], [None, "u"]),
    ]
    assert by_table.counts == by_dicts.counts == Counter(rows_without_time=2, rows_not_after_training=1)


def test_rows_from_add_and_add_table_keep_their_order():
    collector = SeriesCollector(["v"])
    collector.add({"time": 3.0, "series": "s", "v": 1.0})
    collector.add_table(pa.table({"time": [1.0, 9.0], "series": ["s", "t"], "v": [2, 3]}))
    collector.add({"time": 2.0, "series": "s", "v": 4.0})
    collector.add_table(pa.table({"time": [0.0], "v": [5.0]}))  # no series column: series ""
    assert [(s.name, s.times.tolist(), s.values[:, 0].tolist()) for s in collector.series()] == [
        ("", [0.0], [5.0]), ("s", [3.0, 1.0, 2.0], [1.0, 2.0, 4.0]), ("t", [9.0], [3.0])]


def test_rows_in_series_order_are_collected_as_interleaved_rows_are():
    """A record file of a window model holds its rows by series: add_table takes each
    series' run as a slice. Same series, rows and values as the same rows interleaved,
    and as add; a row without a time or before the training data still left out."""
    rng = np.random.default_rng(7)
    by_series = [{"time": float(t), "series": name, "v": float(rng.normal()), "w": int(t)}
                 for name in ("a", "b", "c") for t in range(6)]
    by_series[4]["time"] = None
    interleaved = sorted(by_series, key=lambda r: (r["w"], r["series"]))
    guard = {"b": 1.0}
    collected_from = []
    for records, tabled in ((by_series, True), (interleaved, True), (by_series, False)):
        collector = SeriesCollector(["v", "w"], not_before=guard)
        if tabled:
            collector.add_table(privet.record_tables(records).__next__())
        else:
            collector.extend(records)
        collected_from.append((collected(collector), collector.counts))
    assert collected_from[0] == collected_from[1] == collected_from[2]
    got, counts = collected_from[0]
    assert [(name, len(times)) for name, times, _v, _l in got] == [("a", 5), ("b", 4), ("c", 6)]
    assert counts == Counter(rows_without_time=1, rows_not_after_training=2)


def test_a_series_of_a_sorted_table_is_its_own_contiguous_copy():
    """The collected series do not keep the table's matrix alive (a group's rows are held
    once) and are row-major like those add makes."""
    collector = SeriesCollector(["v", "w"])
    collector.add_table(pa.table({"time": [0.0, 1.0, 0.0], "series": ["a", "a", "b"],
                                  "v": [1.0, 2.0, 3.0], "w": [4.0, 5.0, 6.0]}))
    chunks = [v for parts in collector._chunks.values() for _t, v in parts]
    assert all(c.flags["C_CONTIGUOUS"] and c.base is None for c in chunks)
    assert [c.tolist() for c in chunks] == [[[1.0, 4.0], [2.0, 5.0]], [[3.0, 6.0]]]


@pytest.mark.parametrize("keys", [[1, 1, 2, 5, 5, 5, 9], [0.5, 1.5, 2.5], [3], [-1e9, -1e9]])
def test_unique_of_sorted_keys_is_numpys_unique(keys):
    from privet_timeseries.series import _unique_sorted

    keys = np.array(keys)
    for got, want in zip(_unique_sorted(keys), np.unique(keys, return_index=True,
                                                         return_inverse=True, return_counts=True)):
        assert got.dtype == want.dtype and got.tolist() == want.reshape(-1).tolist()


def test_values_too_big_to_sum_are_no_gap():
    """Windows are screened for gaps by a sum first; finite values whose sum overflows
    take the exact check, which finds no gap."""
    values = np.full((12, 2), 1e308)
    s = Series("s", np.arange(12) * H, values)
    counts: Counter[str] = Counter()
    windows = list(make_windows(s, series_index=0, counts=counts, n_targets=1, n_observed=2,
                                n_known=0, length=4, horizon=2, stride=1))
    assert len(windows) == 7 and counts == Counter(windows=7)


# -- windows ------------------------------------------------------------------------------------

def reference_windows(s: Series, *, n_targets: int, n_observed: int, n_known: int, length: int,
                      horizon: int, stride: int, counts: Counter[str]) -> list[dict[str, Any]]:
    """One window at a time, the way make_windows worked before it was vectorised."""
    out = []
    v = s.values
    for start in range(0, len(v) - length - horizon + 1, stride):
        cut, end = start + length, start + length + horizon
        past, fut, known = v[start:cut, :n_observed], v[cut:end, :n_targets], v[start:end, n_observed:]
        if not (np.isfinite(past).all() and np.isfinite(fut).all() and np.isfinite(known).all()):
            counts["windows_with_gaps"] += 1
            continue
        rec = {"series": s.name, "series_index": 3, "time": float(s.times[cut] if horizon else s.times[cut - 1]),
               "shape": shape_text(length, horizon, n_targets, n_observed, n_known),
               "window": np.ascontiguousarray(v[start:end, :n_observed + n_known], "<f4").tobytes()}
        decoded = Window.from_record(rec)  # the layout cuts out what the loop above checked
        assert np.array_equal(decoded.past, past.astype("<f4")) and np.array_equal(decoded.future, fut.astype("<f4"))
        assert np.array_equal(decoded.known, known.astype("<f4"))
        if s.labels is not None:
            if s.labels[cut - 1] is None:
                counts["windows_without_label"] += 1
                continue
            rec["label"] = s.labels[cut - 1]
        counts["windows"] += 1
        out.append(rec)
    return out


@pytest.mark.parametrize("horizon, stride, n_known, labelled", [
    (3, 1, 1, False), (2, 3, 0, False), (0, 1, 1, True), (0, 2, 0, True)])
def test_make_windows_gives_the_windows_of_the_per_window_loop(horizon, stride, n_known, labelled):
    rng = np.random.default_rng(4)
    n = 60
    values = rng.normal(size=(n, 3 + n_known)) * 1e3
    values[[7, 30], 0] = np.nan     # target gaps
    values[44, 2] = np.inf          # an observed feature gap
    if n_known:
        values[52, 3] = np.nan      # a known-feature gap
    labels = [None if i % 9 == 0 else f"c{i % 4}" for i in range(n)] if labelled else None
    s = Series("s", np.arange(n) * H, values, labels)
    shapes = dict(n_targets=1, n_observed=3, n_known=n_known, length=5, horizon=horizon, stride=stride)
    want, got = Counter(), Counter()
    expected = reference_windows(s, counts=want, **shapes)
    windows = list(make_windows(s, series_index=3, counts=got, **shapes))
    assert windows == expected and len(windows) > 10
    assert got == want and got["windows_with_gaps"] > 0
    assert (got["windows_without_label"] > 0) == labelled


def test_make_windows_counts_a_short_series_once():
    counts: Counter[str] = Counter()
    s = Series("s", np.arange(4.0), np.zeros((4, 1)))
    assert list(make_windows(s, n_targets=1, n_observed=1, n_known=0, length=3, horizon=2, stride=1,
                             series_index=0, counts=counts)) == []
    assert counts == Counter(series_too_short=1)


# -- the MLP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("task, label", [("classification", "label"), ("regression", "y")])
def test_mlp_fits_tables_as_it_fits_dicts(host, task, label):
    records = [dict(r, code=(i % 5) * 2) for i, r in enumerate(rows(2))]
    options = {"task": task, "label": label, "embed": ["code"], "exclude": ["cal_hour"]}
    by_dicts = host.make("model", "timeseries.mlp", options)
    by_tables = host.make("model", "timeseries.mlp", options)
    by_dicts.fit(records)
    half = len(records) // 2
    tables = [pa.Table.from_pylist(records[:half]), pa.Table.from_pylist(records[half:])]
    by_tables.fit(privet.RecordStream(lambda: tables))
    assert_close(by_dicts.state_dict(), by_tables.state_dict())
    st = by_tables.state
    assert st["cardinalities"] == [9]  # the largest code, 8, plus one
    # numbers only: not the label, the embedded code, the excluded field, text or bools
    assert st["features"] == (["count", "temp", "value", "y"] if task == "classification"
                              else ["count", "temp", "value"])
    temp = np.array([r["temp"] for r in records], float)
    temp = temp[np.isfinite(temp)]
    assert st["scaling"][st["features"].index("temp")] == pytest.approx([temp.mean(), temp.std()])
    if task == "classification":
        assert st["labels"] == ["calm", "fog", "storm"]
    else:
        y = np.array([r["y"] for r in records if r["y"] is not None])
        assert st["label_scaling"] == pytest.approx([y.mean(), y.std()])


def test_a_constant_label_gets_scale_one_from_tables_too(host):
    records = [{"x": float(i), "y": 0.1} for i in range(50)]
    model = host.make("model", "timeseries.mlp", {"task": "regression", "label": "y"})
    model.fit(privet.RecordStream(lambda: [pa.Table.from_pylist(records)]))
    assert model.state["label_scaling"] == pytest.approx([0.1, 1.0])


# -- groups of series (Model.example_groups), made apart as preparation's workers make them ----

def grouped(model: Any, data: list[dict[str, Any]], split: str,
            view: Any = stream) -> tuple[list[Any], list[Any], list[Any]]:
    """The groups of ``split``, the window tables of every group and the groups' reports,
    made on pickled copies of the model (as in worker processes)."""
    import pickle

    groups = model.example_groups(view(data), split)
    tables, reports = [], []
    for group in groups:
        worker = pickle.loads(pickle.dumps(model))
        made = worker.group_example_tables(view(data), split, group)
        while True:
            try:
                tables.append(next(made))
            except StopIteration as stop:
                reports.append(stop.value)
                break
    return groups, tables, reports


@pytest.mark.parametrize("task", list(TASKS))
def test_windows_made_by_groups_of_series_equal_one_pass(host, monkeypatch, task):
    monkeypatch.setattr("privet_timeseries.series.MIN_GROUP_ROWS", 1)  # one series per group
    records = rows()
    records += [dict(r, series=None) for r in rows(2)[:60]]  # a null series: named "None"
    val = later(records, 200 * H)
    model = host.make("model", "timeseries.lstm", TASKS[task])
    with pytest.warns(UserWarning):
        model.fit(stream(records))
        for split, data in (("train", records), ("val", val)):
            one_pass = pa.concat_tables(model.example_tables(stream(data), split))
            expected_report = model.prep_report.pop(split)
            groups, tables, reports = grouped(model, data, split)
            assert groups == [("None",), ("north",), ("south",), ("west",)]
            assert pa.concat_tables(tables).equals(one_pass), split
            model.merge_group_reports(split, reports)
            assert model.prep_report[split] == expected_report, split
    assert model.example_groups(stream(records), "predict") is None


def test_groups_cut_series_by_rows_and_take_int_series_ids(host, monkeypatch):
    from privet_timeseries import series

    monkeypatch.setattr(series, "MIN_GROUP_ROWS", 1)
    monkeypatch.setattr(series, "MAX_GROUPS", 2)
    records = [{"time": float(i), "series": i % 3 + 1, "value": float(i)} for i in range(90)]
    table = pa.Table.from_pylist(records)
    assert series.series_groups([table]) == [("1", "2"), ("3",)]  # 45 rows a group at most 2
    model = host.make("model", "timeseries.lstm", {"input_length": 3, "horizon": 1})
    model.fit(privet.RecordStream(lambda: [table]))
    one_pass = pa.concat_tables(model.example_tables(privet.RecordStream(lambda: [table]), "train"))
    _groups, tables, _reports = grouped(model, records, "train", lambda _data: privet.RecordStream(lambda: [table]))
    assert pa.concat_tables(tables).equals(one_pass) and one_pass.num_rows == 3 * 27


def test_a_table_in_series_order_gives_each_group_as_one_run_of_rows(monkeypatch):
    """What preparation's record files hold for a window model (series_order): a group's
    rows are found by bisection, the same rows a filter finds; names sort as text (10
    before 2) and a null series is "None"."""
    from privet_timeseries import series

    monkeypatch.setattr(series, "MIN_GROUP_ROWS", 1)
    monkeypatch.setattr(series, "MAX_GROUPS", 3)
    ids = [2, 10, None, 1, 10, 3, 2, 1, None, 33] * 7
    table = pa.Table.from_pylist([{"time": float(i), "series": v, "value": float(i)} for i, v in enumerate(ids)])
    order = series.series_order(table)
    ordered = table.take(order)
    names = [str(v) for v in ordered.column("series").to_pylist()]
    assert names == sorted(names) and names[0] == "1" and names[-1] == "None"
    assert series.series_order(ordered) is None  # already in order: nothing to move
    groups = series.series_groups([table])
    assert len(groups) == 3 and sorted(n for g in groups for n in g) == sorted(set(names))
    for group in groups:
        run = series.run_of_series(ordered, group[0], group[-1])
        assert run.equals(series.rows_of_series(ordered, set(group))), group
    assert series.run_of_series(ordered, "4", "8").num_rows == 0
    bare = pa.table({"time": [1.0, 2.0]})  # no series column: one series named ""
    assert series.run_of_series(bare, "", "a").num_rows == 2
    assert series.run_of_series(bare, "a", "b").num_rows == 0


def test_tables_in_series_order_are_counted_by_runs_with_the_same_groups(monkeypatch):
    """Record files marked in series order are counted by runs of equal names (a series
    may run on from one file into the next); the groups are those of counting each row."""
    from privet.data.arrow import RECORD_ORDER_KEY
    from privet_timeseries import series

    monkeypatch.setattr(series, "MIN_GROUP_ROWS", 1)
    monkeypatch.setattr(series, "MAX_GROUPS", 3)
    names = [f"s{i}" for i in (1, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5, 6)]
    plain = [pa.table({"series": names[:7]}), pa.table({"series": names[7:]}), pa.table({"series": ["s9"]})]
    marked = [t.replace_schema_metadata({RECORD_ORDER_KEY: b"1"}) for t in plain]
    counted = [list(series._series_rows(t)) for t in marked]
    assert counted == [[("s1", 2), ("s2", 3), ("s3", 1), ("s4", 1)], [("s4", 3), ("s5", 1), ("s6", 1)],
                       [("s9", 1)]]
    assert series.series_groups(marked) == series.series_groups(plain) == [
        ("s1", "s2"), ("s3", "s4"), ("s5", "s6", "s9")]
    nulls = pa.table({"series": ["a", None]}).replace_schema_metadata({RECORD_ORDER_KEY: b"1"})
    assert sorted(series._series_rows(nulls)) == [("None", 1), ("a", 1)]  # by names, not runs


def test_a_large_split_gets_more_groups_of_bounded_rows(monkeypatch):
    """A worker holds one group: past MAX_GROUPS groups of MAX_GROUP_ROWS, a larger split
    gets more groups, not larger ones (a group stops at the series that fills it)."""
    from privet_timeseries import series

    monkeypatch.setattr(series, "MIN_GROUP_ROWS", 1)
    monkeypatch.setattr(series, "MAX_GROUP_ROWS", 30)
    rows = {f"s{i:02d}": 10 for i in range(40)} | {"s99": 95}
    table = pa.table({"series": [n for n, k in rows.items() for _ in range(k)]})
    groups = series.series_groups([table])
    assert len(groups) == 14 > series.MAX_GROUPS
    assert [sum(rows[n] for n in g) for g in groups] == [30] * 13 + [10 + 95]
    assert [n for g in groups for n in g] == sorted(rows)


def test_a_split_without_a_full_window_fails_after_its_groups_as_in_one_pass(host):
    records = rows()
    model = host.make("model", "timeseries.lstm", {"input_length": 6, "horizon": 2, "exclude": ["y"]})
    model.fit(stream(records))
    short = [r for r in records if r["time"] is not None and r["time"] < 5 * H]
    with pytest.raises(DataError) as one_pass, pytest.warns(UserWarning, match="not strictly after"):
        list(model.example_tables(stream(short), "val"))
    _groups, tables, reports = grouped(model, short, "val")
    assert tables == []
    with pytest.raises(DataError) as by_groups, pytest.warns(UserWarning, match="not strictly after"):
        model.merge_group_reports("val", reports)
    assert str(by_groups.value) == str(one_pass.value)
    assert "validation split has no full window" in str(one_pass.value)


@pytest.mark.parametrize("task", list(TASKS))
def test_a_window_model_fitted_by_pickled_parts_has_the_state_of_fit(host, task):
    import pickle

    records = rows(3)
    direct = host.make("model", "timeseries.lstm", TASKS[task])
    direct.fit(stream(records))
    by_parts = host.make("model", "timeseries.lstm", TASKS[task])
    tables = [pa.Table.from_pylist(records[i:i + 37]) for i in range(0, len(records), 37)]
    by_parts.fit_merge(pickle.loads(pickle.dumps(by_parts.fit_table(t))) for t in tables)
    assert_close(direct.state_dict(), by_parts.state_dict())
    assert list(by_parts.state["train_end"]) == ["north", "south", "west"]  # first-seen order
