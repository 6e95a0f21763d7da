"""Sliding windows over a clean series, stored as compact examples.

A window example is a flat dict of five fields that the Arrow cache stores as it is:
``series``, ``series_index``, ``time`` (the first forecast step, or the last input row
for sequence tasks), ``shape`` (``"L,H,T,P,K"``) and ``window``: the raw little-endian
float32 bytes of the window's ``L+H`` rows of the series, row after row, each row its
``P+K`` columns ``[targets | observed features | known covariates]``. The model reads

``past``    rows ``:L``, columns ``:P`` (targets then observed features, up to the cut)
``future``  rows ``L:``, columns ``:T`` (the targets over the horizon; none for sequence tasks)
``known``   all rows, columns ``P:`` (covariates known in advance, such as calendar features)

and never the observed features of the horizon rows (columns ``T:P`` of rows ``L:``):
they are what the series held then, or zeros in a window made in memory. Sequence
classification/regression examples also hold ``label``. One bytes field instead of lists
of floats is what keeps loading fast: a worker turns a batch's bytes back into arrays
with one ``np.frombuffer``, with no Python object per number. Because a window is a
range of its series' rows, preparation stores each run of rows once and the windows as
Arrow ``binary_view`` values pointing into it (see :mod:`privet.data.views`):
overlapping windows share their rows, so the cache grows with the data, not with
``input_length + horizon`` copies of it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import attrs
import numpy as np

from privet import Record

from .series import Series

DTYPE = np.dtype("<f4")
#: Arrow stores values of up to 12 bytes inside a ``binary_view``'s view.
INLINE_BYTES = 12


def shape_text(length: int, horizon: int, n_targets: int, n_observed: int, n_known: int) -> str:
    return f"{length},{horizon},{n_targets},{n_observed},{n_known}"


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``"L,H,T,P,K"`` -> five ints; ``ValueError`` if malformed."""
    parts = tuple(int(p) for p in str(text).split(","))
    if len(parts) != 5 or min(parts) < 0:
        raise ValueError(f"bad window shape {text!r}")
    return parts  # type: ignore[return-value]


@attrs.define(frozen=True)
class WindowLayout:
    """Where past, future and known sit in a window's ``L+H`` rows x ``P+K`` columns."""

    length: int
    horizon: int
    n_targets: int
    n_observed: int
    n_known: int

    @classmethod
    def parse(cls, text: str) -> "WindowLayout":
        return cls(*parse_shape(text))

    @property
    def width(self) -> int:
        return self.n_observed + self.n_known

    @property
    def size(self) -> int:
        """float32 values in one window."""
        return (self.length + self.horizon) * self.width

    def cut(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(past, future, known) views of ``flat``: n windows x :attr:`size` values."""
        L, T, P = self.length, self.n_targets, self.n_observed
        rows = flat.reshape(len(flat), L + self.horizon, self.width)
        return rows[:, :L, :P], rows[:, L:, :T], rows[:, :, P:]

    def read(self) -> np.ndarray:
        """The positions in a window of the values a model reads (all but the horizon's
        observed features), for finiteness checks."""
        mask = np.ones((self.length + self.horizon, self.width), bool)
        mask[self.length:, self.n_targets:self.n_observed] = False
        return np.flatnonzero(mask)

    def pack(self, past: np.ndarray, future: np.ndarray, known: np.ndarray) -> bytes:
        """The window bytes of the three arrays (the horizon's observed features: zeros)."""
        rows = np.zeros((self.length + self.horizon, self.width), DTYPE)
        rows[:self.length, :self.n_observed] = past
        rows[self.length:, :self.n_targets] = future
        rows[:, self.n_observed:] = known
        return rows.tobytes()


@attrs.define
class Window:
    """A window example decoded into arrays (what augmenters work on)."""

    past: np.ndarray
    future: np.ndarray
    known: np.ndarray
    n_targets: int

    @classmethod
    def from_record(cls, rec: Record) -> "Window":
        layout = WindowLayout.parse(rec["shape"])
        flat = np.frombuffer(rec["window"], dtype=DTYPE)
        if flat.size != layout.size:
            raise ValueError(f"window holds {flat.size} values, shape {rec['shape']} needs {layout.size}")
        past, future, known = layout.cut(flat.reshape(1, -1))
        return cls(past[0], future[0], known[0], layout.n_targets)

    def to_record(self, rec: Record) -> Record:
        """A copy of ``rec`` holding this window's arrays (same shapes)."""
        out = dict(rec)
        out["window"] = WindowLayout.parse(rec["shape"]).pack(self.past, self.future, self.known)
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
    read = values[:, :n_observed + n_known]
    if not np.isfinite(read.sum()):  # a gap somewhere (or a sum too big): find its windows
        cuts, ends = starts + length, starts + span
        past_bad = _bad_prefix(read[:, :n_observed])
        fut_bad = _bad_prefix(read[:, :n_targets])
        known_bad = _bad_prefix(read[:, n_observed:])
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
    ``n_observed`` counts targets plus observed features. A table's windows are views
    into one float32 block of the rows they cover, each row stored once however many
    windows hold it: no Python object and no copy per window.
    """
    import pyarrow as pa

    kept = _window_starts(s, n_targets=n_targets, n_observed=n_observed, n_known=n_known,
                          length=length, horizon=horizon, stride=stride, counts=counts)
    if kept is None:
        return
    starts, labels = kept
    layout = WindowLayout(length, horizon, n_targets, n_observed, n_known)
    shape = shape_text(length, horizon, n_targets, n_observed, n_known)
    at = starts + length if horizon else starts + length - 1
    per_table = max(1, min(TABLE_WINDOWS, BLOCK_BYTES // (layout.size * DTYPE.itemsize)))
    for lo in range(0, len(starts), per_table):
        first = starts[lo:lo + per_table]
        m = len(first)
        columns = {"series": pa.array([s.name] * m, pa.string()),
                   "series_index": pa.array(np.full(m, series_index, np.int64)),
                   "time": pa.array(s.times[at[lo:lo + m]].astype(np.float64)),
                   "shape": pa.array([shape] * m, pa.string()),
                   "window": _window_array(s.values, first, layout)}
        if labels is not None:
            columns["label"] = pa.array(labels[lo:lo + m])
        yield pa.table(columns)


#: Most bytes of series rows behind one table's windows (view offsets are int32).
BLOCK_BYTES = 1 << 30


def _window_array(values: np.ndarray, first: np.ndarray, layout: WindowLayout) -> Any:
    """The windows starting at rows ``first`` (sorted) as a ``binary_view`` array over
    one block of the rows they cover (plain bytes when a window is too small to point to)."""
    import pyarrow as pa

    span = layout.length + layout.horizon
    nbytes = layout.size * DTYPE.itemsize
    if nbytes <= INLINE_BYTES:  # Arrow keeps values this short inside the view itself
        rows = values[first[:, None] + np.arange(span), :layout.width]
        data = np.ascontiguousarray(rows, dtype=DTYPE).reshape(len(first), -1)
        offsets = np.arange(len(first) + 1, dtype=np.int32) * nbytes
        return pa.Array.from_buffers(pa.binary(), len(first), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    edges = np.zeros(len(values) + 1, np.int32)
    edges[first] += 1
    edges[first + span] -= 1
    covered = np.cumsum(edges[:-1]) > 0  # rows inside some window
    block = np.ascontiguousarray(values[covered, :layout.width], dtype=DTYPE)
    row_in_block = (np.cumsum(covered) - 1)[first]
    views = np.empty((len(first), 4), np.int32)
    views[:, 0] = nbytes
    views[:, 1] = block.view(np.int32)[row_in_block, 0]  # a view's first four bytes
    views[:, 2] = 0
    views[:, 3] = row_in_block * layout.width * DTYPE.itemsize
    return pa.Array.from_buffers(pa.binary_view(), len(first), [None, pa.py_buffer(views), pa.py_buffer(block)])


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
    known = values[cut - length:end, n_observed:n_observed + n_known] if n_known else np.zeros((length + horizon, 0))
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
            "window": WindowLayout(length, horizon, n_targets, n_observed, n_known).pack(
                past, np.zeros((horizon, n_targets)), known)}
