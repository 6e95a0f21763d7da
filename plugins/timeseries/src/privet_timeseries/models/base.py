"""What the window models (LSTM, TFT) share: fitting, windowing, encoding, loss.

Lifecycle with the engine: ``fit`` on the cleaned training rows learns the columns, the
series, where training ends in time and the target scaling -> ``examples`` turns each
split's rows into windows (sorted, de-duplicated, regular, filled; never across series
or splits) -> ``encode``/``collate`` in workers -> ``step``. The module takes raw
inputs and returns forecasts in the units of the data: normalisation is inside it, built
from the fitted state, so an exported model needs nothing else.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any, Collection, Generator, Iterable, Iterator, Literal, Optional

import attrs
import numpy as np

from privet import DataError, DropRecord, Model, Record, StepOutput, in_record_order, record_tables
from privet import OptionValueError, positive

from ..categorical import category_of
from ..columns import RESERVED, merge_stats
from ..scaling import ColumnScaler
from ..series import (Duplicates, Fill, SeriesCollector, SeriesRules, distinct_values, first_seen,
                      has_values, numeric_values, regularize, rows_of_series, run_of_series,
                      series_groups, series_names, series_order)
from ..sources import TIME
from ..stats import RunningStats, finite
from ..timeparse import parse_frequency
from ..windows import DTYPE, WindowLayout, forecast_window, shape_text, window_tables

#: Above this input length an LSTM's gradient through time tends to vanish.
LONG_SEQUENCE = 1024
KNOWN_PREFIX = "cal_"


class TimeSeriesWarning(UserWarning):
    """Something in the data was handled by rule (sorted, merged, filled, skipped)."""


class LongSequenceWarning(TimeSeriesWarning):
    """The input window is long enough for an LSTM's gradients to vanish."""


def _check_frequency(_inst: Any, _attr: Any, value: str | None) -> None:
    if value is not None:
        try:
            parse_frequency(value)
        except ValueError as err:
            raise OptionValueError(str(err), "frequency") from None


def _check_dropout(_inst: Any, attr: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise OptionValueError(f"{attr.name} must be in [0, 1), got {value}", attr.name)


@attrs.define(frozen=True)
class WindowOptions:
    """Options of every window model."""

    #: Fields to forecast (or, for sequence tasks, to read as input).
    targets: list[str] = attrs.field(factory=lambda: ["value"])
    #: Observed covariates (known up to the cut only); ``null`` = every other numeric field.
    features: Optional[list[str]] = None
    #: Covariates known in advance for the horizon too; ``null`` = fields named ``cal_*``.
    known_features: Optional[list[str]] = None
    #: Numeric fields never used as inputs.
    exclude: list[str] = attrs.field(factory=list)
    input_length: int = attrs.field(default=48, validator=positive)
    horizon: int = attrs.field(default=12, validator=positive)
    #: Rows between two window starts.
    stride: int = attrs.field(default=1, validator=positive)
    #: ``forecast`` the next ``horizon`` steps, or ``classification`` / ``regression`` of
    #: ``label`` at the last row of each window.
    task: Literal["forecast", "classification", "regression"] = "forecast"
    label: str = "label"
    #: Rows sharing a timestamp (or grid slot): average them, keep the first or last, or fail.
    duplicates: Duplicates = "mean"
    #: Put each series on a regular grid (``1h``, ``15min``); empty slots are filled.
    frequency: Optional[str] = attrs.field(default=None, validator=_check_frequency)
    #: How gaps (missing values, inserted slots) are filled within a series.
    fill: Fill = "interpolate"
    target_scaling: Literal["standard", "robust", "minmax", "none"] = "standard"
    #: Scale each series by its own statistics (unseen series use the global ones).
    scale_per_series: bool = True
    loss: Literal["mse", "mae", "huber", "quantile"] = "mse"
    #: Quantiles predicted with ``loss: quantile`` (must include 0.5, the point forecast).
    quantiles: list[float] = attrs.field(factory=lambda: [0.1, 0.5, 0.9])
    dropout: float = attrs.field(default=0.1, validator=_check_dropout)

    def __attrs_post_init__(self) -> None:
        if not self.targets:
            raise OptionValueError("targets must name at least one field", "targets")
        qs = self.quantiles
        if self.loss == "quantile":
            if any(not 0 < q < 1 for q in qs) or sorted(set(qs)) != list(qs):
                raise OptionValueError(f"quantiles must be increasing and in (0, 1), got {qs}", "quantiles")
            if 0.5 not in qs:
                raise OptionValueError("quantiles must include 0.5: the median is the point forecast "
                                       "that metrics compare", "quantiles")
        if self.task != "forecast" and self.loss == "quantile":
            raise OptionValueError(f"loss 'quantile' is for task 'forecast', not {self.task!r}", "loss")


class WindowModel(Model):
    """Base of the window models; subclasses define ``Options`` and ``build``."""

    Options = WindowOptions
    #: ``privet predict`` reads whole series and predicts one window per series.
    examples_at_inference = True

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        self.task = o.task
        if o.input_length > LONG_SEQUENCE:
            warnings.warn(
                f"model {self.name or type(self).__name__}: input_length {o.input_length} is above "
                f"{LONG_SEQUENCE}; LSTMs suffer from vanishing gradients over sequences this long "
                f"(the start of the window barely influences learning). Shorten the window, "
                f"resample to a coarser frequency, or add calendar/lag features instead",
                LongSequenceWarning, stacklevel=2)
        self.state: dict[str, Any] = {}
        self.prep_report: dict[str, dict[str, int]] = {}

    def default_lr(self) -> float | None:
        """AdamW at 3e-3: on a noisy hourly seasonal series (4 epochs) it beat 1e-3 for both
        the LSTM (val MAE 0.76 vs 0.82) and the TFT (0.77 vs 0.82); 1e-2 was no better for
        the LSTM and is less forgiving for attention."""
        return 3e-3

    # -- shapes ------------------------------------------------------------------------------

    @property
    def horizon(self) -> int:
        return self.options.horizon if self.task == "forecast" else 0

    @property
    def n_quantiles(self) -> int:
        return len(self.options.quantiles) if self.options.loss == "quantile" else 1

    @property
    def n_targets(self) -> int:
        return len(self.state["targets"])

    @property
    def n_observed(self) -> int:
        return len(self.state["targets"]) + len(self.state["features"])

    @property
    def n_known(self) -> int:
        return len(self.state["known"])

    @property
    def n_series(self) -> int:
        return len(self.state["series"])

    @property
    def n_classes(self) -> int:
        return len(self.state.get("labels") or [])

    # -- fit ---------------------------------------------------------------------------------

    def fit(self, records: Iterable[Record]) -> None:
        """Learn columns, series, the end of training per series, and the scalings.

        One pass over the records as Arrow tables (:func:`privet.record_tables`): numpy per
        column instead of a dict per row, with the numbers the record-by-record rules give.
        """
        self.fit_merge(self.fit_table(t) for t in record_tables(records))

    def fit_table(self, table: Any) -> "_Scan":
        """What one table of training records adds to the fit (made in the workers)."""
        o = self.options
        scan = _Scan(scaler=ColumnScaler(o.target_scaling, o.scale_per_series))
        self._scan_table(scan, table)
        return scan

    def fit_merge(self, parts: Iterable["_Scan"]) -> None:
        o = self.options
        scan = _Scan(scaler=ColumnScaler(o.target_scaling, o.scale_per_series))
        for part in parts:
            scan.merge(part)
        scaler = scan.scaler
        fields, present, train_end = scan.fields, scan.present, scan.train_end
        labels, label_stats, n = scan.labels, scan.label_stats, scan.rows
        if n == 0:
            raise DataError(f"model {self.name}: no training records to fit on")
        if TIME not in present:
            raise DataError(f"model {self.name}: the records have no {TIME!r} field; use the "
                            f"timeseries.csv / timeseries.parquet sources with a time_column")
        missing = [c for c in o.targets if c not in present]
        if missing:
            raise DataError(f"model {self.name}: target(s) {', '.join(map(repr, missing))} not in the "
                            f"records (fields: {', '.join(sorted(present))}); fix model.options.targets")
        known = list(o.known_features) if o.known_features is not None else \
            sorted(k for k in fields if k.startswith(KNOWN_PREFIX) and k not in o.targets)
        taken = set(o.targets) | set(known) | set(o.exclude)
        features = list(o.features) if o.features is not None else sorted(k for k in fields if k not in taken)
        for option, cols in (("features", o.features), ("known_features", o.known_features)):
            absent = [c for c in cols or () if c not in present]
            if absent:
                raise DataError(f"model {self.name}: {option} {', '.join(map(repr, absent))} not in the "
                                f"records (fields: {', '.join(sorted(present))})")
        if self.task == "classification" and len(labels) < 2:
            raise DataError(f"model {self.name}: classification needs at least 2 classes in field "
                            f"{o.label!r} of the training split, found {len(labels)}")
        scaler.finish(o.targets)

        def loc_scale(col: str) -> list[float]:
            st = fields.get(col)
            if st is None or st.count == 0:
                return [0.0, 1.0]
            return [st.mean, st.std if st.std > 1e-12 else 1.0]

        self.state = {
            "targets": list(o.targets),
            "features": features,
            "known": known,
            "series": sorted(train_end),
            "train_end": train_end,
            "target_scaler": scaler.state_dict(),
            "feature_scaling": [loc_scale(c) for c in features],
            "known_scaling": [loc_scale(c) for c in known],
        }
        if self.task == "classification":
            self.state["labels"] = sorted(labels)
        if self.task == "regression":
            # the threshold, not ``std or 1``: numpy's std of a constant column is ~1e-17
            self.state["label_scaling"] = [label_stats.mean, label_stats.std if label_stats.std > 1e-12 else 1.0] \
                if label_stats.count else [0.0, 1.0]
        self._derive()

    def _scan_table(self, scan: "_Scan", table: Any) -> None:
        """Add one table of training records to ``scan`` (its target scaler too).

        Target values and the series of each go to the scaler; the label is counted or,
        for regression, measured.
        """
        o = self.options
        scan.rows += table.num_rows
        scan.present.update(table.column_names)
        names, codes = series_names(table)
        times = numeric_values(table, TIME)
        if times is not None:
            _update_ends(scan.train_end, names, codes, times)
        add_field_stats(scan.fields, table, RESERVED | {o.label})
        series = np.array(names, dtype=object)
        for col in o.targets:
            values = numeric_values(table, col)
            if values is not None:
                ok = np.isfinite(values)
                if ok.any():
                    scan.scaler.observe_many(col, values[ok], series[codes[ok]])
        if self.task == "classification":
            count_labels(scan.labels, table, o.label)
        elif self.task == "regression":
            values = numeric_values(table, o.label)
            if values is not None:
                scan.label_stats.add_many(values)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state, windowing=self.prep_report)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {k: v for k, v in state.items() if k != "windowing"}
        self.prep_report = dict(state.get("windowing", {}))
        self._derive()

    def _derive(self) -> None:
        """Arrays the workers and the module need, from the JSON state."""
        st = self.state
        self._series_index = {name: i + 1 for i, name in enumerate(st["series"])}  # 0: unseen
        scaler = ColumnScaler.from_state(st["target_scaler"])
        rows = [None, *st["series"]]
        self._target_loc = np.array([[scaler.loc_scale(c, s)[0] for c in st["targets"]] for s in rows], np.float32)
        self._target_scale = np.array([[scaler.loc_scale(c, s)[1] for c in st["targets"]] for s in rows], np.float32)
        self._label_index = {lab: i for i, lab in enumerate(st.get("labels") or [])}
        L, H = self.options.input_length, self.horizon
        self._shape = shape_text(L, H, self.n_targets, self.n_observed, self.n_known)
        self._layout = WindowLayout(L, H, self.n_targets, self.n_observed, self.n_known)
        self._nbytes = self._layout.size * DTYPE.itemsize
        self._read = self._layout.read()

    # -- windows -----------------------------------------------------------------------------

    def examples(self, records: Iterable[Record], split: str) -> Iterator[Record]:
        """Windows of one split: per series, sorted, cleaned by rule, never crossing splits.

        ``split="predict"`` (inference on new rows) gives one window per series that
        forecasts past its last observed target instead.
        """
        for item in self._windows(records, split):
            if isinstance(item, dict):
                yield item
            else:
                yield from item.to_pylist()

    def example_tables(self, records: Iterable[Record], split: str) -> Iterator[Any]:
        """The windows of :meth:`examples` as Arrow tables of up to 8,192 windows (what
        preparation writes: no dict per window)."""
        yield from self._windows(records, split)

    def example_groups(self, records: Iterable[Record], split: str) -> list[Any] | None:
        """The split's series names, sorted, cut into up to ``MAX_GROUPS`` runs of about
        equal rows (:func:`~..series.series_groups`): windows never cross series, so
        workers make the groups' windows side by side, each holding only its own series."""
        if split == "predict":
            return None
        return series_groups(record_tables(records))

    def group_example_tables(self, records: Iterable[Record], split: str,
                             group: Any) -> Generator[Any, None, dict[str, Any]]:
        """The window tables of the series named in ``group``; returns their counters and
        longest series for :meth:`merge_group_reports`."""
        counts, longest = yield from self._split_windows(records, split, tuple(group))
        return {"counts": dict(counts), "longest": list(longest)}

    def record_order(self, table: Any) -> Any:
        """Records by series name, sorted as :meth:`example_groups` sorts them, in their
        own order within a series: a group is then one run of rows of each record file."""
        return series_order(table)

    def merge_group_reports(self, split: str, reports: list[Any]) -> None:
        counts: Counter[str] = Counter()
        longest = ("", 0)
        for report in reports:
            counts.update(report["counts"])
            if report["longest"][1] > longest[1]:  # ties: the first in name order, as in one pass
                longest = (report["longest"][0], report["longest"][1])
        self._finish_split(split, counts, longest)

    def _windows(self, records: Iterable[Record], split: str) -> Iterator[Any]:
        """Window tables of one split (forecast window dicts for ``predict``)."""
        counts, longest = yield from self._split_windows(records, split)
        self._finish_split(split, counts, longest)

    def _finish_split(self, split: str, counts: Counter[str], longest: tuple[str, int]) -> None:
        self.prep_report[split] = dict(sorted(counts.items()))
        self._announce(split, counts)
        if split != "predict" and not counts.get("windows"):
            self._check_not_empty(split, counts, longest)

    def _split_windows(self, records: Iterable[Record], split: str, group: tuple[str, ...] | None = None
                       ) -> Generator[Any, None, tuple[Counter[str], tuple[str, int]]]:
        """The windows of the split's series (of those in ``group``, a run of sorted names);
        returns the counters and the longest series after regularizing (name, rows)."""
        o = self.options
        st = self.state
        columns = st["targets"] + st["features"] + st["known"]
        guard = st["train_end"] if split in ("val", "test") else None
        collector = SeriesCollector(columns, label=o.label if self.task != "forecast" else None,
                                    not_before=guard)
        names = None if group is None else set(group)
        for table in record_tables(records):
            if group is not None:  # a run of rows in a record file of the cache, else a filter
                table = (run_of_series(table, group[0], group[-1]) if in_record_order(table)
                         else rows_of_series(table, names))
            collector.add_table(table)
        counts = collector.counts
        rules = SeriesRules(o.duplicates, o.frequency, o.fill)
        longest = ("", 0)  # the split's longest series after regularizing: (name, rows)
        shapes = dict(n_targets=self.n_targets, n_observed=self.n_observed, n_known=self.n_known,
                      length=o.input_length, horizon=self.horizon, counts=counts)
        for s in collector.series():
            sid = self._series_index.get(s.name, 0)
            if split == "predict":
                observed = np.isfinite(s.values[:, : self.n_targets]).all(axis=1)
                if not observed.any():
                    counts["series_without_targets"] += 1
                    continue
                last = float(s.times[observed].max())
                s.values[s.times > last, : self.n_targets] = 0.0  # the unknown future, not a gap
                window = forecast_window(regularize(s, rules, counts), last_time=last,
                                         series_index=sid, **shapes)
                if window is not None:
                    yield window
                continue
            clean = regularize(s, rules, counts)
            if len(clean.times) > longest[1]:
                longest = (clean.name, len(clean.times))
            yield from window_tables(clean, stride=o.stride, series_index=sid, **shapes)
        return counts, longest

    def _announce(self, split: str, counts: Counter[str]) -> None:
        notes = {
            "unsorted_series": "series had unsorted rows (sorted by time)",
            "duplicate_timestamps": f"rows shared a timestamp (merged: {self.options.duplicates})",
            "inserted_rows": "empty grid slots were inserted",
            "filled_values": f"missing values were filled ({self.options.fill})",
            "windows_with_gaps": "windows were skipped: a gap was left after filling",
            "windows_without_label": "windows were skipped: no label at their last row",
            "rows_not_after_training": ("rows were dropped: not strictly after the end of "
                                        "training in their series (no leakage across the cut; "
                                        "for forecasting split with data.split method ordered "
                                        "or field)"),
            "rows_without_time": "rows were dropped: no time",
            "series_without_future_covariates": ("series got no forecast: known covariates are "
                                                 "missing for the horizon after the last target"),
        }
        said = [f"{counts[k]} {text}" for k, text in notes.items() if counts.get(k)]
        if said:
            warnings.warn(f"model {self.name} split {split!r}: " + "; ".join(said), TimeSeriesWarning,
                          stacklevel=3)

    def _check_not_empty(self, split: str, counts: Counter[str], longest: tuple[str, int]) -> None:
        """Refuse a split that was given rows but yields no full window.

        Training on it is impossible, and a validation or test split without windows would
        let the run finish "completed" with no metrics at all. A split given no rows
        (``data.split.val: 0``) is left alone: that is a choice, not an accident.
        """
        given = longest[1] + counts.get("rows_not_after_training", 0) + counts.get("rows_without_time", 0)
        if not given:
            return
        o = self.options
        span = o.input_length + self.horizon
        what = {"train": "training", "val": "validation"}.get(split, split)
        need = (f"the {what} split has no full window: it needs at least {span} rows per series "
                f"(input_length {o.input_length}" + (f" + horizon {self.horizon})" if self.horizon else ")"))
        if longest[1] >= span:
            skipped = [f"{counts[k]} {text}" for k, text in (
                ("windows_with_gaps", "with a gap left after filling"),
                ("windows_without_label", "without a label")) if counts.get(k)]
            have = (f"its longest series {longest[0]!r} has {longest[1]} rows, but its windows "
                    f"were skipped ({', '.join(skipped)})")
        elif longest[1]:
            have = f"its longest series {longest[0]!r} has {longest[1]}"
        else:
            have = "it has 0"
        late = counts.get("rows_not_after_training", 0)
        if late:
            have += (f" ({late} of its rows were dropped for not being after the end of training "
                     f"in their series)")
        fix = ("lower input_length/horizon or change data.split (for forecasting, "
               "{method: ordered} or {method: field} with the source's split_time, so that the "
               "split holds a contiguous later period)")
        if split == "train":
            fix = "lower input_length/horizon, provide longer series, or change data.split"
        raise DataError(f"model {self.name}: {need}; {have}; {fix}")

    # -- workers -----------------------------------------------------------------------------

    def encode(self, record: Record) -> tuple[bytes, int, Any]:
        """Check one window cheaply; the arrays are decoded per batch in :meth:`collate`.

        Per window this costs a length check and one finiteness test of the values the
        model reads (a sum is NaN exactly when one of them is NaN or infinite), so workers
        stay as fast as a hand-written numpy loader.
        """
        blob = record.get("window")
        if not isinstance(blob, bytes) or record.get("shape") != self._shape or len(blob) != self._nbytes:
            raise DropRecord("bad_window", f"shape {record.get('shape')!r}, model expects {self._shape!r}")
        if not math.isfinite(float(np.frombuffer(blob, DTYPE)[self._read].sum(dtype=np.float64))):
            raise DropRecord("non_finite_window", f"series {record.get('series')!r}")
        sid = record.get("series_index", 0)
        if not isinstance(sid, int) or not 0 <= sid < len(self._target_loc):
            sid = 0  # an unseen series: global statistics
        if self.task == "forecast":
            return blob, sid, None
        if self.task == "classification":
            idx = self._label_index.get(category_of(record.get("label")))
            if idx is None:
                raise DropRecord("unknown_label", f"{record.get('label')!r} was not in the training split")
            return blob, sid, idx
        v = finite(record.get("label"))
        if v is None:
            raise DropRecord("missing_label", f"series {record.get('series')!r}")
        return blob, sid, v

    def encode_columns(self, batch: Any) -> dict[str, Any]:
        """The batch of :meth:`collate` straight from the cached columns: the windows'
        bytes as one array, checked for shape and finiteness at once. Anything
        :meth:`encode` would drop sends the batch back to it, to be counted by reason."""
        names = batch.names
        shapes = batch.arrow("shape")
        if shapes.null_count or shapes.unique().to_pylist() != [self._shape]:
            raise DropRecord("bad_window")
        try:
            raw = batch.numpy("window")
        except DataError:  # bytes of different lengths, or missing
            raise DropRecord("bad_window") from None
        if raw.shape[1] != self._nbytes:
            raise DropRecord("bad_window")
        flat = raw.view(DTYPE)
        if not np.isfinite(flat[:, self._read]).all():
            raise DropRecord("non_finite_window")
        n = len(batch)
        series = np.zeros(n, np.int64)
        if "series_index" in names:
            try:
                series = batch.numpy("series_index").astype(np.int64, copy=False)
            except DataError:  # nulls: encode() gives those windows the global statistics
                raise DropRecord("bad_window") from None
            series = np.where((series >= 0) & (series < len(self._target_loc)), series, 0)
        labels: list[Any] | None = None
        if self.task == "classification":
            labels = [self._label_index.get(category_of(v)) for v in batch.arrow("label").to_pylist()]
        elif self.task != "forecast":
            labels = [finite(v) for v in batch.arrow("label").to_pylist()]
        if labels is not None and None in labels:
            raise DropRecord("bad_label")
        return self._batch(flat, series, labels)

    def collate(self, items: list[tuple[bytes, int, Any]]) -> dict[str, Any]:
        """One ``frombuffer`` for the whole batch, then views cut into past/future/known."""
        n = len(items)
        flat = np.frombuffer(b"".join(it[0] for it in items), DTYPE).reshape(n, -1)
        series = np.fromiter((it[1] for it in items), np.int64, n)
        labels = None if self.task == "forecast" else [it[2] for it in items]
        return self._batch(flat, series, labels)

    def _batch(self, flat: Any, series: Any, labels: list[Any] | None) -> dict[str, Any]:
        import torch

        past, future, known = self._layout.cut(flat)
        out: dict[str, Any] = {"past": torch.tensor(past),
                               "series": torch.from_numpy(np.ascontiguousarray(series))}
        if self.n_known:
            out["known"] = torch.tensor(known)
        if self.task == "forecast":
            out["future"] = torch.tensor(future)
            out["loc"] = torch.from_numpy(self._target_loc[series])
            out["scale"] = torch.from_numpy(self._target_scale[series])
        else:
            dtype = torch.int64 if self.task == "classification" else torch.float32
            out["label"] = torch.tensor(labels, dtype=dtype)
        return out

    # -- training ----------------------------------------------------------------------------

    def _forward(self, module: Any, batch: dict[str, Any]) -> Any:
        if "known" in batch:
            return module(batch["past"], batch["series"], batch["known"])
        return module(batch["past"], batch["series"])

    def step(self, module: Any, batch: dict[str, Any]) -> StepOutput:
        import torch
        import torch.nn.functional as F

        out = self._forward(module, batch)
        n = batch["past"].shape[0]
        if self.task == "classification":
            per = F.cross_entropy(out.float(), batch["label"], reduction="none")
            return StepOutput(per.sum(), n, out, batch["label"], per_example=per)
        if self.task == "regression":
            _loc, scale = self.state["label_scaling"]
            err = (out.float() - batch["label"]) / scale
            per = self._point_loss(err).reshape(n, -1).sum(1)
            return StepOutput(per.sum(), n, out, batch["label"], per_example=per)
        target = batch["future"]
        loc = batch["loc"][:, None, :]
        scale = batch["scale"][:, None, :]
        z_target = (target - loc) / scale
        if self.options.loss == "quantile":
            qs = torch.tensor(self.options.quantiles, dtype=torch.float32, device=out.device)
            z_pred = (out.float() - loc[..., None]) / scale[..., None]
            diff = z_target[..., None] - z_pred
            pinball = torch.maximum(qs * diff, (qs - 1) * diff)  # (N, H, T, Q)
            per_item = pinball.mean(dim=(1, 2)).sum(-1)
            median = out[..., self.options.quantiles.index(0.5)]
            return StepOutput(per_item.sum(), n, median, target, per_example=per_item)
        err = (out.float() - target) / scale
        per_item = self._point_loss(err).flatten(1).mean(1)
        return StepOutput(per_item.sum(), n, out, target, per_example=per_item)

    def _point_loss(self, err: Any) -> Any:
        import torch.nn.functional as F

        if self.options.loss == "mae":
            return err.abs()
        if self.options.loss == "huber":
            return F.huber_loss(err, err.new_zeros(()).expand_as(err), reduction="none")
        return err * err

    # -- export ------------------------------------------------------------------------------

    def example_inputs(self, batch: dict[str, Any]) -> tuple[Any, ...]:
        inputs = (batch["past"], batch["series"])
        return inputs + (batch["known"],) if "known" in batch else inputs

    def input_names(self) -> list[str]:
        return ["past", "series"] + (["known"] if self.n_known else [])

    def output_names(self) -> list[str]:
        return {"forecast": ["forecast"], "classification": ["logits"]}.get(self.task, ["prediction"])

    # -- inference ---------------------------------------------------------------------------

    def predict(self, module: Any, examples: Iterable[Record], batch_size: int = 256) -> list[dict[str, Any]]:
        """Predictions for window examples with the eager module, via :meth:`postprocess`.

        For forecasts: one dict per window with ``series``, ``time`` (first forecast
        step), ``targets`` and ``forecast`` (``horizon`` rows of target values, in the
        units of the data) and, with ``loss: quantile``, ``quantiles``.
        """
        import torch

        out: list[dict[str, Any]] = []
        pending: list[tuple[Record, Any]] = []

        def flush() -> None:
            if pending:
                with torch.no_grad():
                    pred = self._forward(module, self.collate([item for _, item in pending]))
                out.extend(self.postprocess([pred.cpu().numpy()], [rec for rec, _ in pending]))
                pending.clear()

        was_training = module.training
        module.eval()
        try:
            for rec in examples:
                pending.append((rec, self.encode(rec)))
                if len(pending) >= batch_size:
                    flush()
            flush()
        finally:
            module.train(was_training)
        return out

    def postprocess(self, outputs: list[Any], records: list[Record]) -> list[dict[str, Any]]:
        """One JSON-able dict per window, forecasts in data units (the module un-scales them)."""
        first = np.asarray(outputs[0])
        if self.task != "forecast":
            base = super().postprocess(outputs, records)
            return [{"series": r.get("series"), "time": r.get("time"), **b} for b, r in zip(base, records)]
        qs = list(self.options.quantiles) if self.options.loss == "quantile" else None
        out = []
        for row, rec in zip(first, records):
            entry: dict[str, Any] = {"series": rec.get("series"), "time": rec.get("time"),
                                     "targets": list(self.state["targets"])}
            if qs:
                entry["forecast"] = row[..., qs.index(0.5)].tolist()
                entry["quantiles"] = {f"{q:g}": row[..., i].tolist() for i, q in enumerate(qs)}
            else:
                entry["forecast"] = row.tolist()
            out.append(entry)
        return out

    def class_names(self) -> list[str] | None:
        return list(self.state["labels"]) if self.state.get("labels") else None

    # -- the module's normalisation ------------------------------------------------------------

    def norm_tables(self) -> dict[str, np.ndarray]:
        """Fitted loc/scale tables the module turns into buffers."""
        st = self.state
        feat = np.array(st["feature_scaling"], np.float32).reshape(-1, 2)
        known = np.array(st["known_scaling"], np.float32).reshape(-1, 2)
        return {"target_loc": self._target_loc, "target_scale": self._target_scale,
                "feature_loc": feat[:, 0], "feature_scale": feat[:, 1],
                "known_loc": known[:, 0], "known_scale": known[:, 1]}

    def _require_fit(self) -> None:
        if not self.state:
            raise DataError(f"model {self.name}: build() before fit(); the engine fits the model "
                            f"on the training split first")


@attrs.define
class _Scan:
    """What :meth:`WindowModel.fit` gathers over the training tables: one table's worth
    is a ``fit_table`` part, and parts merge in source order."""

    scaler: ColumnScaler
    fields: dict[str, RunningStats] = attrs.field(factory=dict)
    present: set[str] = attrs.field(factory=set)
    train_end: dict[str, float] = attrs.field(factory=dict)
    labels: Counter[str] = attrs.field(factory=Counter)
    label_stats: RunningStats = attrs.field(factory=lambda: RunningStats(quantiles=False))
    rows: int = 0

    def merge(self, other: "_Scan") -> None:
        """Add ``other``, the scan of later tables (as scanning them after these would)."""
        self.scaler.merge(other.scaler)
        merge_stats(self.fields, other.fields)
        self.present |= other.present
        for name, t in other.train_end.items():  # new series in the order of their first row
            if t > self.train_end.get(name, -math.inf):
                self.train_end[name] = t
        self.labels.update(other.labels)
        self.label_stats.merge(other.label_stats)
        self.rows += other.rows


def add_field_stats(fields: dict[str, RunningStats], table: Any, skip: Collection[str]) -> None:
    """Add each numeric column of ``table`` (not in ``skip``) to its stats in ``fields``.

    A field is numeric when its column is int or float typed (the record path's
    ``is_number``) and holds a value (a null is no number); non-finite values are skipped,
    as ``finite`` skips them. Its stats are made on first sight, as the record path makes them.
    """
    for key in table.column_names:
        if key in skip or not has_values(table, key):
            continue
        values = numeric_values(table, key)
        if values is not None:
            stats = fields.get(key)
            if stats is None:
                stats = fields[key] = RunningStats(quantiles=False)  # means and stds only
            stats.add_many(values)


def count_labels(labels: Counter[str], table: Any, key: str) -> None:
    """Count the categories of column ``key``'s non-null values (``category_of``, as the
    record path counts ``record[key]``), once per distinct value."""
    values, codes = distinct_values(table, key)
    per_value = np.bincount(codes[codes >= 0], minlength=len(values)).tolist()
    for value, count in zip(values, per_value):
        if count:
            labels[category_of(value)] += count


def _update_ends(ends: dict[str, float], names: list[str], codes: np.ndarray, times: np.ndarray) -> None:
    """Raise ``ends[name]`` to the latest finite time of each series in one table; new series
    are added in the order of their first timed row, as the record path adds them."""
    ok = np.isfinite(times)
    if not ok.any():
        return
    codes, times = codes[ok], times[ok]
    latest = np.full(len(names), -math.inf)
    np.maximum.at(latest, codes, times)
    for code in first_seen(codes).tolist():
        name, t = names[code], float(latest[code])
        if t > ends.get(name, -math.inf):
            ends[name] = t
