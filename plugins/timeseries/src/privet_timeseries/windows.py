"""Sliding windows over a clean series, stored as compact examples.

A window example is a flat dict of five fields that the Arrow cache stores as it is:
``series``, ``series_index``, ``time`` (the first forecast step, or the last input row
for sequence tasks), ``shape`` (``"L,H,T,P,K"``) and ``window``: the raw little-endian
float32 bytes of three arrays one after the other,

``past``    (L, P): targets then observed features, up to the cut
``future``  (H, T): the targets over the horizon (none for sequence tasks)
``known``   (L+H, K): covariates known in advance (calendar features)

plus ``label`` for sequence classification/regression. One bytes field instead of lists
of floats (or one field per array) is what keeps loading fast: reading a cached row costs
per field, and a worker turns the bytes back into arrays with one ``np.frombuffer`` for a
whole batch, with no Python object per number.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import attrs
import numpy as np

from privet import Record

from .series import Series

DTYPE = np.dtype("<f4")


def pack(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=DTYPE).tobytes()


def shape_text(length: int, horizon: int, n_targets: int, n_observed: int, n_known: int) -> str:
    return f"{length},{horizon},{n_targets},{n_observed},{n_known}"


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``"L,H,T,P,K"`` -> five ints; ``ValueError`` if malformed."""
    parts = tuple(int(p) for p in str(text).split(","))
    if len(parts) != 5 or min(parts) < 0:
        raise ValueError(f"bad window shape {text!r}")
    return parts  # type: ignore[return-value]


@attrs.define
class Window:
    """A window example decoded into arrays (what augmenters work on)."""

    past: np.ndarray
    future: np.ndarray
    known: np.ndarray
    n_targets: int

    @classmethod
    def from_record(cls, rec: Record) -> "Window":
        L, H, T, P, K = parse_shape(rec["shape"])
        flat = np.frombuffer(rec["window"], dtype=DTYPE)
        a, b = L * P, L * P + H * T
        if flat.size != b + (L + H) * K:
            raise ValueError(f"window holds {flat.size} values, shape {rec['shape']} needs {b + (L + H) * K}")
        return cls(flat[:a].reshape(L, P), flat[a:b].reshape(H, T), flat[b:].reshape(L + H, K), T)

    def to_record(self, rec: Record) -> Record:
        """A copy of ``rec`` holding this window's arrays (same shapes)."""
        out = dict(rec)
        out["window"] = pack(self.past) + pack(self.future) + pack(self.known)
        return out

    @property
    def length(self) -> int:
        return len(self.past)

    def joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(targets over length+horizon, past-only features, known) as float64 arrays."""
        t = self.n_targets
        targets = np.concatenate([self.past[:, :t], self.future[:, :t]]).astype(np.float64)
        return targets, self.past[:, t:].astype(np.float64), self.known.astype(np.float64)

    @classmethod
    def from_joined(cls, targets: np.ndarray, features: np.ndarray, known: np.ndarray,
                    length: int) -> "Window":
        past = np.concatenate([targets[:length], features], axis=1).astype(DTYPE)
        return cls(past, targets[length:].astype(DTYPE), known.astype(DTYPE), targets.shape[1])


def _bad_prefix(block: np.ndarray) -> np.ndarray:
    """Prefix counts of rows holding a non-finite value (O(1) range checks)."""
    bad = ~np.isfinite(block).all(axis=1) if block.shape[1] else np.zeros(len(block), bool)
    return np.concatenate([[0], np.cumsum(bad)])


#: Windows per table of :func:`window_tables` (about 18 MB of float32 at 48 x 10 columns).
TABLE_WINDOWS = 8192


def _window_starts(s: Series, *, n_targets: int, n_observed: int, n_known: int, length: int,
                   horizon: int, stride: int, counts: Counter[str]
                   ) -> tuple[np.ndarray, list[object] | None] | None:
    """The first rows of the windows to keep and their labels; windows with a gap that
    filling left, or without a label, are skipped (counted). None: no window."""
    values = s.values
    n = len(values)
    span = length + horizon
    if n < span:
        counts["series_too_short"] += 1
        return None
    starts = np.arange(0, n - span + 1, stride)
    cuts, ends = starts + length, starts + span
    past_bad = _bad_prefix(values[:, :n_observed])
    fut_bad = _bad_prefix(values[:, :n_targets])
    known_bad = _bad_prefix(values[:, n_observed:n_observed + n_known])
    gap = ((past_bad[cuts] != past_bad[starts]) | (fut_bad[ends] != fut_bad[cuts])
           | (known_bad[ends] != known_bad[starts]))
    if gap.any():
        counts["windows_with_gaps"] += int(gap.sum())
        starts = starts[~gap]
    labels: list[object] | None = None
    if s.labels is not None:
        labels = [s.labels[i] for i in (starts + length - 1).tolist()]
        unlabelled = np.fromiter((lab is None for lab in labels), bool, len(labels))
        if unlabelled.any():
            counts["windows_without_label"] += int(unlabelled.sum())
            starts = starts[~unlabelled]
            labels = [lab for lab in labels if lab is not None]
    if not len(starts):
        return None
    counts["windows"] += len(starts)
    return starts, labels


def window_tables(s: Series, *, n_targets: int, n_observed: int, n_known: int, length: int,
                  horizon: int, stride: int, series_index: int, counts: Counter[str]) -> Iterator[Any]:
    """Windows of one series as pyarrow Tables of up to ``TABLE_WINDOWS`` rows.

    ``values`` columns are ``[targets | observed features | known features]``;
    ``n_observed`` counts targets plus observed features. Each window's bytes are gathered
    for a whole run of windows with numpy (past, future and known blocks side by side in
    one float32 matrix) and handed to Arrow as one buffer: no Python object per window.
    """
    import pyarrow as pa

    kept = _window_starts(s, n_targets=n_targets, n_observed=n_observed, n_known=n_known,
                          length=length, horizon=horizon, stride=stride, counts=counts)
    if kept is None:
        return
    starts, labels = kept
    values = np.ascontiguousarray(s.values, dtype=DTYPE)
    shape = shape_text(length, horizon, n_targets, n_observed, n_known)
    at = starts + length if horizon else starts + length - 1
    span = np.arange(length + horizon)
    for lo in range(0, len(starts), TABLE_WINDOWS):
        first = starts[lo:lo + TABLE_WINDOWS]
        rows = first[:, None] + span  # (windows, length + horizon) row numbers
        m = len(first)
        block = np.concatenate([values[rows[:, :length], :n_observed].reshape(m, -1),
                                values[rows[:, length:], :n_targets].reshape(m, -1),
                                values[rows, n_observed:n_observed + n_known].reshape(m, -1)], axis=1)
        width = block.shape[1] * DTYPE.itemsize
        offsets = np.arange(m + 1, dtype=np.int32) * width
        columns = {"series": pa.array([s.name] * m, pa.string()),
                   "series_index": pa.array(np.full(m, series_index, np.int64)),
                   "time": pa.array(s.times[at[lo:lo + m]].astype(np.float64)),
                   "shape": pa.array([shape] * m, pa.string()),
                   "window": pa.Array.from_buffers(pa.binary(), m, [None, pa.py_buffer(offsets),
                                                                    pa.py_buffer(block)])}
        if labels is not None:
            columns["label"] = pa.array(labels[lo:lo + m])
        yield pa.table(columns)


def make_windows(s: Series, *, n_targets: int, n_observed: int, n_known: int, length: int,
                 horizon: int, stride: int, series_index: int,
                 counts: Counter[str]) -> Iterator[Record]:
    """Windows of one series as example dicts (the rows of :func:`window_tables`)."""
    for table in window_tables(s, n_targets=n_targets, n_observed=n_observed, n_known=n_known,
                               length=length, horizon=horizon, stride=stride,
                               series_index=series_index, counts=counts):
        yield from table.to_pylist()


def forecast_window(s: Series, *, last_time: float, n_targets: int, n_observed: int, n_known: int,
                    length: int, horizon: int, series_index: int, counts: Counter[str]) -> Record | None:
    """The window that forecasts past the last observed target of a series (for inference).

    Its input is the ``length`` rows up to ``last_time``; known covariates must be given
    for the ``horizon`` rows after it (rows with a time but no target). The unknown
    future targets are stored as zeros.
    """
    values = s.values
    cut = int(np.searchsorted(s.times, last_time, side="right"))
    end = cut + horizon
    if cut < length:
        counts["series_too_short"] += 1
        return None
    if n_known and end > len(values):
        counts["series_without_future_covariates"] += 1
        return None
    past = values[cut - length:cut, :n_observed]
    known = values[cut - length:end, n_observed:n_observed + n_known]
    if not (np.isfinite(past).all() and np.isfinite(known).all()):
        counts["windows_with_gaps"] += 1
        return None
    if cut < len(s.times):
        first = float(s.times[cut])
    else:  # no future rows: one typical step after the last
        step = float(np.median(np.diff(s.times))) if len(s.times) > 1 else 1.0
        first = float(s.times[cut - 1]) + step
    counts["windows"] += 1
    return {"series": s.name, "series_index": series_index, "time": first,
            "shape": shape_text(length, horizon, n_targets, n_observed, n_known),
            "window": pack(past) + pack(np.zeros((horizon, n_targets))) + pack(known)}
