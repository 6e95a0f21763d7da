"""Records as Arrow tables: the columnar side of the record contract.

Preparation hands components an iterable of records (dicts). Where the data came
through the columnar path (``Source.read_table``, ``Cleaner.clean_table``) or from the
Arrow cache, the same records exist as Arrow tables already; a component that works
over columns (statistics with numpy, a series grouped by key) asks for them with
:func:`record_tables` instead of paying one Python dict per row. Both views hold the
same records in the same order.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ..components import Record

#: Records per table when a stream of dicts is turned into tables.
TABLE_ROWS = 8192


class RecordStream:
    """An iterable of records that can also give them as Arrow tables, in order.

    Made by the engine for ``Cleaner.fit``, ``Model.fit`` and ``Model.examples``; each
    iteration (of either view) reads the data again, so a component may pass over it
    several times.
    """

    def __init__(self, tables: Callable[[], Iterable[Any]]) -> None:
        #: a factory of the stream's items: pyarrow Tables and record dicts, in order
        self._items = tables

    def __iter__(self) -> Iterator[Record]:
        for item in self._items():
            if isinstance(item, dict):
                yield item
            else:
                for batch in item.to_batches(max_chunksize=1024):
                    yield from batch.to_pylist()

    def tables(self) -> Iterator[Any]:
        """The records as pyarrow Tables (runs of dicts converted by :func:`records_table`)."""
        return table_runs(self._items())


def table_runs(items: Iterable[Any]) -> Iterator[Any]:
    """``items`` with each run of record dicts turned into tables of up to ``TABLE_ROWS``
    rows; tables pass as they are (empty ones are left out), and so does anything else."""
    run: list[Record] = []
    for item in items:
        if isinstance(item, dict):
            run.append(item)
            if len(run) >= TABLE_ROWS:
                yield records_table(run)
                run = []
            continue
        if run:
            yield records_table(run)
            run = []
        if getattr(item, "num_rows", 1):
            yield item
    if run:
        yield records_table(run)


def record_tables(records: Iterable[Record]) -> Iterator[Any]:
    """``records`` as pyarrow Tables, in order: the engine's tables when it has them (a
    :class:`RecordStream`), else runs of ``TABLE_ROWS`` dicts converted here (a plain list
    in a unit test, say). Columns are the union of the records' keys in first-seen order;
    missing keys are null."""
    tables = getattr(records, "tables", None)
    if callable(tables):
        yield from tables()
        return
    run: list[Record] = []
    for record in records:
        run.append(record)
        if len(run) >= TABLE_ROWS:
            yield records_table(run)
            run = []
    if run:
        yield records_table(run)


def records_table(records: list[Record]) -> Any:
    """Dicts as one pyarrow Table, forgiving where a column's values do not agree.

    A column mixing numbers and other values (a stray text cell) keeps its numbers as
    float64 and nulls the rest, which is how the numeric statistics of the record path
    treat it (they skip what is not a number); any other disagreement becomes strings.
    """
    import pyarrow as pa

    keys: dict[str, None] = {}
    for record in records:
        for key in record:
            keys.setdefault(key, None)
    columns = {}
    for key in keys:
        values = [r.get(key) for r in records]
        kinds = set(map(type, values))
        if bool in kinds and kinds & {int, float}:  # Arrow would make True 1.0
            columns[key] = _forgiving_array(values)
            continue
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            columns[key] = _forgiving_array(values)
    return pa.table(columns) if columns else pa.table({}).slice(0, 0)


def _forgiving_array(values: list[Any]) -> Any:
    import pyarrow as pa

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if any(number(v) for v in values):
        return pa.array([float(v) if number(v) else None for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())
