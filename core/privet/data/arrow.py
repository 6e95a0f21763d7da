"""Memory-mapped Arrow IPC shards: written once, read with random access.

Reading maps the files, so a shuffled epoch needs no copy of the data in RAM and
DataLoader workers share the pages with the main process. In an encrypted cache a shard
is serialised in memory and sealed by the storage module, and read back by decrypting
it whole, shard by shard, into memory (DataLoader workers forked after that share those
pages): no plaintext shard ever reaches the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import DataError, PluginError
from ..storage import Storage
from .views import compact_views, take_table

_FROM_FOLDER: Any = object()

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .columns import Columns

_FLUSH_BYTES = 64 << 20


def _approx_size(record: dict[str, Any]) -> int:
    n = 0
    for v in record.values():
        if isinstance(v, (str, bytes)):
            n += len(v)
        elif isinstance(v, list):
            n += 8 * len(v)
        else:
            n += 8
    return n


def rows_table(rows: list[dict[str, Any]], split: str) -> Any:
    """``rows`` as a pyarrow Table; a one-line error when their types do not agree."""
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"records of split {split!r} cannot be stored: {err}; a "
                        f"component yields values of different types under one key") from err


def ipc_file_bytes(rows: list[dict[str, Any]], split: str) -> bytes:
    """The bytes of one Arrow IPC file holding ``rows`` (a shard made in a worker process)."""
    import pyarrow as pa

    table = rows_table(rows, split)
    buffer = pa.BufferOutputStream()
    with pa.ipc.new_file(buffer, table.schema) as writer:
        writer.write_table(table)
    return buffer.getvalue().to_pybytes()


#: schema metadata of a record file stored in the order of ``Model.record_order``
RECORD_ORDER_KEY = b"privet.record_order"


def in_model_order(table: Any, order: Callable[[Any], Any]) -> Any:
    """``table`` in the order ``order`` (a model's ``record_order``) gives, marked so.
    Anything but a permutation of its rows is refused: a record lost or stored twice
    would change the examples without a word."""
    import numpy as np

    perm = order(table)
    if perm is not None:
        perm = np.asarray(perm)
        n = table.num_rows
        if (perm.shape != (n,) or not np.issubdtype(perm.dtype, np.integer)
                or (n and (perm.min() < 0 or perm.max() >= n
                           or bool((np.bincount(perm, minlength=n) != 1).any())))):
            who = getattr(getattr(order, "__self__", None), "name", None) or getattr(order, "__qualname__", "?")
            raise PluginError(f"model {who}: record_order must return a permutation of the table's "
                              f"{n} rows (an int array) or None; got {perm.dtype} of shape {perm.shape}")
        table = take_table(table, perm)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), RECORD_ORDER_KEY: b"1"})


def in_record_order(table: Any) -> bool:
    """Whether ``table`` (a cached record file) holds its rows in the order of the
    model's :meth:`~privet.Model.record_order`."""
    return bool(table.schema.metadata) and table.schema.metadata.get(RECORD_ORDER_KEY) == b"1"


def write_arrow_file(storage: Storage, name: str, table: Any) -> Path:
    """Write ``table`` as the Arrow IPC file ``name`` of ``storage``: sealed in memory for
    an encrypted folder, else written by pyarrow and renamed into place whole."""
    import pyarrow as pa

    storage.makedirs()
    table = compact_views(table)  # a slice of a view column would be written whole
    if storage.encrypts(name):  # serialised in memory, sealed, written atomically
        buffer = pa.BufferOutputStream()
        with pa.ipc.new_file(buffer, table.schema) as writer:
            writer.write_table(table)
        storage.write_bytes(name, memoryview(buffer.getvalue()))
    else:
        # pyarrow writes the file itself (the storage module hands it the path), then
        # the rename makes the shard appear whole; the preparation fsyncs the cache's
        # folders once before its meta.json, not once per shard
        with pa.OSFile(str(storage.path(name + ".tmp")), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        storage.rename(name + ".tmp", name, sync=False)
    return storage.path(name)


class ArrowShardWriter:
    """Buffers records and writes them as Arrow IPC files of at most ``shard_rows`` rows."""

    def __init__(self, folder: Path | Storage, split: str, shard_rows: int, name: str | None = None,
                 order: Callable[[Any], Any] | None = None) -> None:
        #: a Storage keeps its cipher; a plain path gets its folder's (see privet.storage)
        self.storage = folder if isinstance(folder, Storage) else Storage(folder)
        self.folder = self.storage.root
        self.split = split
        #: files are named NAME-00000.arrow, ... (NAME: the split by default)
        self.name = name or split
        #: rows of each file, in order
        self.file_rows: list[int] = []
        self.shard_rows = max(1, shard_rows)
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._bytes = 0
        self._files: list[str] = []
        #: tables of add_table() not yet written, and their rows
        self._tables: list[Any] = []
        self._pending = 0
        #: a model's record_order, applied to each file (records of a model with examples)
        self.order = order

    def add(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        self._bytes += _approx_size(record)
        self.rows += 1
        if self._tables:  # after tables: records join them, in order
            if len(self._buffer) + self._pending >= self.shard_rows:
                self._buffer_to_tables()
                while self._pending >= self.shard_rows:
                    self._write_tables(self.shard_rows)
        elif len(self._buffer) >= self.shard_rows or self._bytes >= _FLUSH_BYTES:
            self._flush()

    def _buffer_to_tables(self) -> None:
        if self._buffer:
            table = rows_table(self._buffer, self.split)
            self._tables.append(table)
            self._pending += table.num_rows
            self._buffer = []
            self._bytes = 0

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._write(rows_table(self._buffer, self.split))
        self._buffer = []
        self._bytes = 0

    def _write(self, table: Any) -> None:
        """One shard file holding ``table``."""
        if self.order is not None:
            table = in_model_order(table, self.order)
        self._files.append(str(write_arrow_file(self.storage, f"{self.name}-{len(self._files):05d}.arrow",
                                                table)))
        self.file_rows.append(table.num_rows)

    def add_file(self, path: str, rows: int) -> None:
        """A shard file written elsewhere (by a worker, with :func:`write_arrow_file`), next
        in order: what was added before it is written first, as a shorter shard."""
        if self._tables or self._buffer:
            self._buffer_to_tables()
            self._write_tables(self._pending)
        self._files.append(str(path))
        self.file_rows.append(rows)
        self.rows += rows

    def add_table(self, table: Any) -> None:
        """Rows made elsewhere (a worker's Arrow table): written in shards of ``shard_rows``
        rows like :meth:`add`'s, with one schema (a column all null in one part takes the
        type the others give it). Records and tables may alternate; order is kept."""
        self._buffer_to_tables()
        self._tables.append(table)
        self._pending += table.num_rows
        self.rows += table.num_rows
        while self._pending >= self.shard_rows:
            self._write_tables(self.shard_rows)

    def _write_tables(self, rows: int) -> None:
        import pyarrow as pa

        try:
            joined = pa.concat_tables(self._tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataError(f"examples of split {self.split!r} cannot be stored: {err}; a "
                            f"component yields values of different types under one key") from err
        head, rest = joined.slice(0, rows), joined.slice(rows)
        self._tables = [rest] if rest.num_rows else []
        self._pending = rest.num_rows
        self._write(head.combine_chunks())

    def close(self) -> list[str]:
        if self._tables:
            self._buffer_to_tables()
            self._write_tables(self._pending)
        self._flush()
        return list(self._files)


def _index_array(indices: Any) -> Any:
    """Indices (a list or an array) for ``Table.take`` as an int64 numpy array.

    Given a Python list, pyarrow converts it like any sequence of Python objects, which
    tries ``import dateutil.relativedelta`` on every call (a failing import scans
    sys.path when dateutil is not installed): ~140 us per batch instead of ~5 us.
    """
    import numpy as np

    return np.asarray(indices, dtype=np.int64)


class ArrowTable:
    """Random access over the rows of several Arrow IPC files, memory-mapped.

    ``cipher``: the cache's (decrypt each shard into memory); by default the one the
    storage module registered for the files' folder, if any.
    """

    def __init__(self, files: list[str], cipher: Any = _FROM_FOLDER) -> None:
        self.files = list(files)
        if cipher is _FROM_FOLDER:
            cipher = Storage(Path(self.files[0]).parent).cipher if self.files else None
        self.cipher = cipher
        self._tables: list[Any] | None = None
        self._offsets: list[int] = []
        #: numpy views of columns, per file (see privet.data.columns.column_views)
        self._views: dict[str, list[Any] | None] = {}
        self._open()
        self.num_rows = sum(t.num_rows for t in self._tables or [])

    def _open(self) -> list[Any]:
        if self._tables is None:
            tables = []
            offsets = []
            total = 0
            for f in self.files:
                table = self._read(f)
                offsets.append(total)
                total += table.num_rows
                tables.append(table)
            self._tables, self._offsets = tables, offsets
        return self._tables

    def _read(self, file: str) -> Any:
        import pyarrow as pa

        storage = Storage(Path(file).parent, cipher=self.cipher)
        name = Path(file).name
        if storage.encrypts(name):  # authenticated whole before pyarrow parses a byte
            return pa.ipc.open_file(pa.BufferReader(storage.read_bytes(name))).read_all()
        return pa.ipc.open_file(pa.memory_map(str(storage.local_file(name)), "r")).read_all()

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict[str, Any]:  # workers re-map the files themselves
        state = dict(self.__dict__)
        state["_tables"] = None
        state["_views"] = {}
        return state

    def columns(self, indices: Any) -> Columns:
        """The examples at ``indices`` (in that order), column by column, gathered only
        when asked for: what :meth:`privet.Model.encode_columns` is given."""
        from .columns import Columns

        return Columns(self, _index_array(indices))

    def by_file(self, indices: Any) -> Iterator[tuple[int, Any, Any]]:
        """For each file holding some of ``indices``: its number, the positions in
        ``indices`` it holds (int64 array) and their row numbers within the file."""
        import numpy as np

        idx = _index_array(indices)
        if len(self._open()) == 1:
            yield 0, np.arange(len(idx)), idx
            return
        offsets = np.asarray(self._offsets)
        which = np.searchsorted(offsets, idx, side="right") - 1
        for t in np.unique(which).tolist():
            positions = np.flatnonzero(which == t)
            yield t, positions, idx[positions] - offsets[t]

    def rows(self, indices: list[int]) -> list[dict[str, Any]]:
        """The records at ``indices`` (in that order)."""
        tables = self._open()
        if len(tables) == 1:
            return take_table(tables[0], _index_array(indices)).to_pylist()
        out: list[Any] = [None] * len(indices)
        for t, positions, local in self.by_file(indices):
            for pos, row in zip(positions.tolist(), take_table(tables[t], local).to_pylist()):
                out[pos] = row
        return out

    def column(self, name: str) -> list[Any]:
        out: list[Any] = []
        for table in self._open():
            if name not in table.column_names:
                raise DataError(f"the prepared records have no field {name!r} "
                                f"(fields: {', '.join(table.column_names)}); set data.label_field")
            out.extend(table.column(name).to_pylist())
        return out

    def iter_rows(self, batch: int = 1024) -> Iterator[dict[str, Any]]:
        for table in self._open():
            for chunk in table.to_batches(max_chunksize=batch):
                yield from chunk.to_pylist()
