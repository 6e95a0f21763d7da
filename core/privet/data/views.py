"""Byte-string columns stored by reference (Arrow's ``binary_view``), gathered and written.

A ``binary_view`` value is 16 bytes that point into a shared data buffer, so values may
overlap: a time-series window is a range of one series' rows, and overlapping windows
share those rows instead of each storing a copy (at a stride of 1 a copy per window
makes the cache about 45 times the data). pyarrow has no ``take`` or ``filter`` kernel
for the type yet; this module gathers such columns with numpy over the 16-byte views,
so the cache can be read like any other, and it trims the data buffers to the bytes the
views use before a table is written (Arrow's IPC writer writes a sliced column's whole
buffers).
"""

from __future__ import annotations

from typing import Any

#: A view is four little-endian int32s: length, first four bytes, buffer index, offset.
#: Values of up to 12 bytes are stored inline in the view and reference no buffer.
INLINE = 12


def is_view(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_binary_view(arrow_type) or pa.types.is_string_view(arrow_type))


def _views(arr: Any) -> Any:
    """``arr``'s views as an (n, 4) int32 array (a copy is not made)."""
    import numpy as np

    return np.frombuffer(arr.buffers()[1], np.int32).reshape(-1, 4)[arr.offset:arr.offset + len(arr)]


def _with_views(arr: Any, views: Any, data: list[Any]) -> Any:
    import pyarrow as pa

    return pa.Array.from_buffers(arr.type, len(views), [None, pa.py_buffer(views.tobytes()), *data])


def take_array(arr: Any, indices: Any) -> Any:
    """``arr.take(indices)`` for any array, view arrays included (sharing their buffers)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()  # views: copies the 16-byte views, not the data
    if not is_view(arr.type):
        return arr.take(indices)
    if arr.null_count:  # rare: let Arrow copy the values into a plain column
        plain = pa.large_string() if pa.types.is_string_view(arr.type) else pa.large_binary()
        return arr.cast(plain).take(indices).cast(arr.type)
    return _with_views(arr, _views(arr)[np.asarray(indices, dtype=np.int64)], arr.buffers()[2:])


def take_table(table: Any, indices: Any) -> Any:
    """``table.take(indices)``, view columns included."""
    import numpy as np
    import pyarrow as pa

    idx = np.asarray(indices, dtype=np.int64)
    if not any(is_view(f.type) for f in table.schema):
        return table.take(idx)
    return pa.table([take_array(c, idx) for c in table.columns], schema=table.schema)


def compact_views(table: Any) -> Any:
    """``table`` with each view column's data buffers cut to the bytes its views use.

    What a slice or a take leaves of a column references the whole buffers, and the IPC
    writer would write them all. Each buffer keeps the span from its first to its last
    used byte (a window's rows are contiguous, so nothing inside the span is unused for
    long), and a buffer listed twice (chunks combined) is written once.
    """
    import pyarrow as pa

    if not any(is_view(f.type) for f in table.schema):
        return table
    columns = [_compact(c.combine_chunks()) if is_view(c.type) else c for c in table.columns]
    return pa.table(columns, schema=table.schema)


def _compact(arr: Any) -> Any:
    import numpy as np

    if arr.null_count or not len(arr):
        return arr
    views = _views(arr).copy()
    data = arr.buffers()[2:]
    ref = views[:, 0] > INLINE
    new_data: list[Any] = []
    where: dict[tuple[int, int], int] = {}  # (address, size) of a buffer -> its new index
    for b in np.unique(views[ref, 2]).tolist():
        mine = ref & (views[:, 2] == b)
        start = int(views[mine, 3].min())
        end = int((views[mine, 3].astype(np.int64) + views[mine, 0]).max())
        key = (data[b].address + start, end - start)
        if key not in where:
            where[key] = len(new_data)
            new_data.append(data[b].slice(start, end - start))
        views[mine, 2] = where[key]
        views[mine, 3] -= start
    return _with_views(arr, views, new_data)


class ViewGather:
    """Values of one length in a view column, gathered as rows x bytes (uint8) by index.

    What :class:`~privet.data.columns.Columns` uses where a plain column gives a numpy
    view: ``gather[idx]`` copies each selected value once, straight from the mapped file.
    """

    def __init__(self, arr: Any, width: int) -> None:
        import numpy as np

        self._views = _views(arr)
        self._data = [np.frombuffer(b, np.uint8) if b is not None and b.size else np.zeros(0, np.uint8)
                      for b in arr.buffers()[2:]]
        self.shape = (len(arr), width)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, idx: Any) -> Any:
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        idx = np.asarray(idx, dtype=np.int64)
        width = self.shape[1]
        out = np.empty((len(idx), width), np.uint8)
        views = self._views[idx]
        if width <= INLINE:  # stored in the views themselves
            out[:] = views.view(np.uint8)[:, 4:4 + width]
            return out
        for b in np.unique(views[:, 2]).tolist():
            mine = np.flatnonzero(views[:, 2] == b)
            out[mine] = sliding_window_view(self._data[b], width)[views[mine, 3]]
        return out


def view_gather(arr: Any) -> ViewGather | None:
    """A :class:`ViewGather` of ``arr`` when all its values have one length and none is
    null; else None."""
    if arr.null_count or not len(arr):
        return None
    lengths = _views(arr)[:, 0]
    if lengths.min() != lengths.max():
        return None
    return ViewGather(arr, int(lengths[0]))
