"""One shard the columnar way, and what the workers hand back instead of records.

A shard a source reads as one Arrow table (``Source.read_table``) that every per-record
cleaner takes (``Cleaner.clean_table``) travels as a table; where its rows' splits are
known here, less travels still: the part a fitting cleaner needs (``fit_table``), or the
names of the cache files the rows were written to. Also here: the parsed tables kept
between passes (the spill), and cleaning a batch of records through a chain of cleaners.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, Iterator, NamedTuple, Sequence

from ..components import Cleaner, Record, Shard, Source
from ..errors import DropRecord, PluginError
from .checks import FLOAT32_MAX

if TYPE_CHECKING:
    from .parallel import PassSpec

#: One item of a shard's outcome stream (plain tuples: they cross process boundaries):
#: ``("drop", reason, where, detail, bad)``: the source dropped it (no ordinal);
#: ``("skip", reason, where, detail)``: a readable record with a bad value (an ordinal);
#: ``("rec", where, path, part, outcome, digest)``: a record; ``outcome`` is the cleaned
#: record, ``("D", reason, detail, bad)`` (a cleaner's DropRecord) or ``("F", cleaner
#: name)``; ``digest`` is the next cleaner's digest of it, or None (see ``digest_batch``).
Item = tuple[Any, ...]


def clean_chain(cleaners: Sequence[Cleaner], records: list[Record],
                digests: list[Any] | None = None) -> list[Any]:
    """Each record through ``cleaners``, cleaner by cleaner over the whole list.

    Returns per record the cleaned record, the :class:`DropRecord` a cleaner gave, or
    the name of the cleaner that filtered it out. A cleaner sees the survivors of the
    earlier ones in source order, as it would one record at a time. ``digests``: the
    first cleaner's digests of ``records``, computed in the workers.
    """
    outcomes: list[Any] = list(records)
    alive = list(range(len(records)))
    for n, cleaner in enumerate(cleaners):
        if not alive:
            break
        if n == 0 and digests is not None:
            results = cleaner.clean_batch(list(records), digests=digests)  # type: ignore[call-arg]
        else:
            results = cleaner.clean_batch([outcomes[i] for i in alive])
        if len(results) != len(alive):
            raise PluginError(f"cleaner {cleaner.name}: clean_batch returned {len(results)} "
                              f"results for {len(alive)} records; return one per record")
        survivors = []
        for i, out in zip(alive, results):
            outcomes[i] = cleaner.name if out is None else out
            if not (out is None or isinstance(out, DropRecord)):
                survivors.append(i)
        alive = survivors
    return outcomes


def portable(outcome: Any, digest: Any) -> tuple[Any, Any]:
    if isinstance(outcome, DropRecord):
        return ("D", outcome.reason, outcome.detail, outcome.bad), None
    if isinstance(outcome, str):
        return ("F", outcome), None
    return outcome, digest


def shard_table(source: Source, shard: Shard, cleaners: Sequence[Cleaner], spec: "PassSpec",
                fitter: Cleaner | None = None) -> Generator[list[Item], None, bool]:
    """The columnar path of one shard: ``[("tab", table, splits)]`` when the source reads it
    as a table (``Source.read_table``) and every cleaner takes it (``Cleaner.clean_table``).
    When the split is known per row, less travels: with a ``fitter``,
    ``[("part", fit_table part or None, rows)]`` (the part of the training rows, the only
    rows the cleaners then clean: per-row cleaners give them the same values either way,
    and a shard without any is not cleaned at all); with
    ``spec.write``, ``[("file", split, file name, rows), ...]`` (the rows, written here).

    Returns False (nothing yielded) when the source declines or the table holds values the
    record checks would report (non-finite numbers, a bad split value): the shard then
    goes the record way from the start, so each drop keeps its line. When a cleaner
    declines, the table's rows continue as records from that cleaner on.
    """
    table = read_shard_table(source, shard, spec.spill, last=spec.write is not None)
    if table is None:
        return False
    splits = table_splits(table, spec.split_field, spec.parts)
    if splits is False:
        return False
    rows = table.num_rows
    if fitter is not None and splits is not None:  # a fitting pass: the training rows alone
        train = splits == TRAIN
        if not train.any():  # nothing in the shard the fit sees
            yield [("part", None, rows)]
            return True
        if not train.all():
            table, splits = table.filter(train), splits[train]
    if has_non_finite(table):
        return False
    for n, cleaner in enumerate(cleaners):
        cleaned = cleaner.clean_table(table)
        if cleaned is None:
            yield from _rows_from(table, cleaners[n:], splits, spec.size)
            return True
        if cleaned.num_rows != table.num_rows:
            raise PluginError(f"cleaner {cleaner.name}: clean_table returned {cleaned.num_rows} "
                              f"rows for {table.num_rows}; decline (return None) to drop rows")
        table = cleaned
    if fitter is not None and splits is not None:
        yield [("part", fit_part(fitter, table), rows)]
    elif spec.write is not None and splits is not None:
        yield write_split_files(table, splits, shard, *spec.write)
    elif table.num_rows:
        yield [("tab", table, splits)]
    return True


def write_split_files(table: Any, splits: Any, shard: Shard, folder: str, cipher: Any,
                      order: Any = None) -> list[Item]:
    """Write each split's rows of a cleaned shard table as one Arrow file of the cache's
    records folder: ``[("file", split, name, rows), ...]`` in split order. The names come
    from the shard, so the files are the same whichever process writes them. ``order``:
    the model's ``record_order``, when it makes its own examples."""
    from ..storage import Storage
    from .arrow import in_model_order, write_arrow_file

    storage = Storage(folder, cipher=cipher)
    out: list[Item] = []
    for code, split in enumerate(SPLITS):
        mask = splits == code
        if mask.any():
            rows = table if mask.all() else table.filter(mask)
            if order is not None:
                rows = in_model_order(rows, order)
            name = f"{split}-{shard_key(shard)}.arrow"
            write_arrow_file(storage, name, rows.combine_chunks())
            out.append(("file", split, name, rows.num_rows))
    return out


def shard_key(shard: Shard) -> str:
    """A file name for what is made of ``shard`` (its path and byte range, hashed)."""
    import hashlib

    return hashlib.sha256(f"{shard.path}\0{shard.start}\0{shard.end}".encode()).hexdigest()[:32]


class RecordFile(NamedTuple):
    """Records a worker wrote as one Arrow file of the cache (see :func:`write_split_files`)."""

    path: str
    rows: int


class FitPart:
    """A cleaner's ``fit_table`` part of some training rows, in the stream of a fitting pass."""

    __slots__ = ("part",)

    def __init__(self, part: Any) -> None:
        self.part = part


def fit_part(fitter: Cleaner, table: Any) -> Any:
    """``fitter.fit_table`` of a table of training rows; None for no rows (no part)."""
    return fitter.fit_table(table) if table.num_rows else None


def read_shard_table(source: Source, shard: Shard, spill: str | None, last: bool = False) -> Any:
    """``source.read_table(shard)``, parsed once per preparation: with a ``spill`` folder,
    the first pass writes the table there as an Arrow file (or a mark for a declined
    shard) and later passes memory-map it instead of parsing the shard again. The
    ``last`` pass to read it (the writing pass) unlinks the file once mapped: its pages
    are freed as soon as the shard is done, for the records that pass writes next,
    instead of a gigabyte of spill staying cached until the pass ends."""
    if spill is None:
        return source.read_table(shard)
    import pyarrow as pa

    from ..storage import Storage
    from .arrow import write_arrow_file

    store = Storage(spill, cipher=None)  # made only for a cache that is not encrypted
    name = shard_key(shard)
    if store.exists(name):
        with pa.memory_map(str(store.path(name))) as mapped:
            if last:  # the mapping keeps the pages while the table needs them
                store.remove(name)
            return pa.ipc.open_file(mapped).read_all()
    if store.exists(name + ".none"):
        return None
    table = source.read_table(shard)
    if table is None:
        store.write_bytes(name + ".none", b"")
        return None
    write_arrow_file(store, name, table)  # inside the cache being made: never uploaded
    return table


#: the splits of a cache, in order; a row's split travels as its index here (int8)
SPLITS = ("train", "val", "test")
TRAIN = SPLITS.index("train")


def table_splits(table: Any, split_field: str | None, parts: dict[str, str]) -> Any:
    """Each row's split from ``split_field`` as an int8 numpy array of indices into
    :data:`SPLITS` (compared, taken and pickled as bytes, not as strings), None without
    one, or False when a value is missing or not a split name (the record path reports
    those)."""
    if split_field is None:
        return None
    import numpy as np
    import pyarrow.compute as pc

    if split_field not in table.column_names:
        return False
    column = table.column(split_field)
    if column.null_count or not (column.type == "string" or column.type == "large_string"):
        return False
    coded = pc.dictionary_encode(column).combine_chunks()  # lower-cased per distinct value
    names = pc.utf8_lower(coded.dictionary).to_pylist()
    if any(n not in parts for n in names):
        return False
    codes = coded.indices.to_numpy(zero_copy_only=False)
    return np.array([SPLITS.index(parts[n]) for n in names] or [0], dtype=np.int8)[codes]


def has_non_finite(table: Any) -> bool:
    """Whether the table may hold a number :func:`~.checks.non_finite` reports (NaN,
    infinity, beyond float32): the record path skips those rows, naming each. Columns of
    lists are not inspected here: their tables take the record path."""
    import pyarrow as pa

    for column in table.columns:
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            return True
        if pa.types.is_floating(kind) and any(_beyond_float32(chunk) for chunk in column.chunks):
            return True
    return False


def _beyond_float32(chunk: Any) -> bool:
    """Whether a chunk of floats holds NaN, an infinity or a value beyond float32 (nulls
    aside). numpy's min and max pass NaN on, so two passes without a temporary answer all
    three: 20x faster than Arrow's ``is_finite`` and ``abs`` kernels, which allocate."""
    import pyarrow.compute as pc

    if chunk.null_count == len(chunk):
        return False
    values = (pc.drop_null(chunk) if chunk.null_count else chunk).to_numpy(zero_copy_only=False)
    return not (-FLOAT32_MAX <= values.min() and values.max() <= FLOAT32_MAX)


def _rows_from(table: Any, cleaners: Sequence[Cleaner], splits: Any, size: int) -> Iterator[list[Item]]:
    """A table's rows through the remaining ``cleaners`` the record way, as stream items
    (no line locations: the engine names them by ordinal)."""
    for lo in range(0, table.num_rows, size):
        records = table.slice(lo, size).to_pylist()
        out = []
        for i, outcome in enumerate(clean_chain(cleaners, records)):
            rec = records[i]
            path = rec.get("path")
            part = None if splits is None else SPLITS[splits[lo + i]]
            out.append(("rec", None, path if isinstance(path, str) and path else None, part,
                        *portable(outcome, None)))
        yield out
