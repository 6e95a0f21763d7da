"""A batch of cached examples, column by column: the input of ``Model.encode_columns``.

Encoding example by example turns every cached row into a Python dict and every value
into a Python object; for a small model that is a large share of the step. A
:class:`Columns` batch hands the model numpy arrays gathered straight from the
memory-mapped Arrow files instead, and only the columns it asks for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .views import is_view, take_array, view_gather

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyarrow as pa

    from .arrow import ArrowTable


def _numeric(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _file_view(column: Any) -> Any:
    """A zero-copy numpy view of one file's column: 1-D for numbers, rows x length for
    lists of numbers of one length, rows x bytes (uint8) for byte strings of one length;
    None for anything else (nulls, text, ragged lists)."""
    import numpy as np
    import pyarrow as pa

    if column.num_chunks != 1:
        return None
    arr = column.chunk(0)
    if arr.null_count:
        return None
    if _numeric(arr.type):
        return arr.to_numpy(zero_copy_only=True)
    if is_view(arr.type):  # values stored by reference: gathered on demand
        return view_gather(arr)
    if (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)) and len(arr):
        # raw bytes of one length (fixed-shape images, packed arrays): rows x bytes, uint8
        _, offsets_buf, data = arr.buffers()
        wide = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        offsets = np.frombuffer(offsets_buf, wide)[arr.offset:arr.offset + len(arr) + 1]
        lengths = np.diff(offsets)
        if lengths.min() != lengths.max():
            return None
        return np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]].reshape(len(arr), int(lengths[0]))
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) or not _numeric(arr.type.value_type):
        return None
    values = arr.flatten()
    if len(arr) == 0 or values.null_count:
        return None
    lengths = np.diff(arr.offsets.to_numpy())
    if lengths.min() != lengths.max():
        return None
    return values.to_numpy(zero_copy_only=True).reshape(len(arr), int(lengths[0]))


def column_views(table: ArrowTable, name: str) -> list[Any] | None:
    """Per file, a numpy view of column ``name`` (cached on ``table``), or None when the
    column cannot be gathered with numpy in every file alike."""
    cache = table._views
    if name in cache:
        return cache[name]
    views: list[Any] | None = []
    for part in table._open():
        if name not in part.column_names:
            views = None
            break
        view = _file_view(part.column(name))
        if view is None or (views and (view.dtype, view.shape[1:]) != (views[0].dtype, views[0].shape[1:])):
            views = None
            break
        views.append(view)
    cache[name] = views
    return views


class Columns:
    """Examples of one batch, in batch order, read column by column on demand.

    ``numpy(name)`` gives numeric fields as a 1-D array, fields holding lists of numbers
    of one length (feature vectors, fixed windows) as a rows x length array and byte
    strings of one length (raw fixed-shape images) as rows x bytes of uint8, gathered
    with numpy from the memory-mapped cache. ``arrow(name)`` gives any field
    as a ``pyarrow.Array`` (token lists of different lengths, strings, images as bytes);
    ``to_pylist()`` gives the records as dicts.
    """

    def __init__(self, table: ArrowTable, indices: np.ndarray) -> None:
        self._table = table
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def names(self) -> list[str]:
        tables = self._table._open()
        return list(tables[0].column_names) if tables else []

    def _missing(self, name: str) -> DataError:
        return DataError(f"the prepared examples have no field {name!r} (fields: "
                         f"{', '.join(self.names)})")

    def numpy(self, name: str, dtype: Any = None) -> np.ndarray:
        """Field ``name`` as a writable numpy array (converted to ``dtype`` if given).

        Raises :class:`DataError` naming the field when it is missing or is not numbers,
        lists of numbers of one length or bytes of one length (use :meth:`arrow` then).
        """
        import numpy as np

        views = column_views(self._table, name)
        if views is None:
            if name not in self.names:
                raise self._missing(name)
            raise DataError(f"field {name!r} is not a number, a list of numbers of one length or "
                            f"bytes of one length in every example; read it with "
                            f"Columns.arrow({name!r})")
        idx = self.indices
        if len(views) == 1:
            out = views[0][idx]  # fancy indexing copies: the result is writable
        else:
            out = np.empty((len(idx), *views[0].shape[1:]), dtype=views[0].dtype)
            for t, positions, local in self._table.by_file(idx):
                out[positions] = views[t][local]
        return out if dtype is None else out.astype(dtype, copy=False)

    def arrow(self, name: str) -> pa.Array:
        """Field ``name`` as a ``pyarrow.Array`` in batch order (any type)."""
        import numpy as np
        import pyarrow as pa

        tables = self._table._open()
        if any(name not in t.column_names for t in tables):
            raise self._missing(name)
        idx = self.indices
        if len(tables) == 1:
            return take_array(tables[0].column(name), idx)
        parts, positions = [], []
        for t, picked, local in self._table.by_file(idx):
            parts.append(take_array(tables[t].column(name), local))
            positions.append(picked)
        joined = pa.concat_arrays(parts)
        # joined holds the values grouped by file; argsort of their positions restores the order
        return take_array(joined, np.argsort(np.concatenate(positions), kind="stable"))

    def to_pylist(self) -> list[dict[str, Any]]:
        """The examples as dicts, like ``Model.encode`` receives them."""
        return self._table.rows(self.indices.tolist())
