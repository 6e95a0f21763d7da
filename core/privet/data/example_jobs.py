"""Jobs on the cached records that run in the workers after the writing pass: the model's
fit parts (``Model.fit_table``), and its examples per run of records or per group
(``Model.per_record_examples``, ``Model.example_groups``)."""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

from ..components import Model

#: Records per job of the examples pass: small enough that every worker gets several
#: jobs of a split, and fixed (not a function of the worker count): the cache is the same.
EXAMPLE_ROWS = 2048
#: the record shard a process' latest example job read (its next job is usually in it)
_last_table: dict[str, Any] = {}


def example_jobs(split: str, records: Any) -> list[tuple[str, str, Any, int, int]]:
    """The examples pass' jobs over one split's record shards (an ``ArrowTable``):
    ``EXAMPLE_ROWS`` rows each."""
    jobs = []
    for file, table in zip(records.files, records._open()):
        rows = table.num_rows
        jobs += [(split, file, records.cipher, lo, min(rows, lo + EXAMPLE_ROWS))
                 for lo in range(0, rows, EXAMPLE_ROWS)]
    return jobs


def example_shard(model: Model, job: tuple[str, str, Any, int, int]) -> bytes | None:
    """The Arrow IPC file of ``model.examples`` over rows ``[lo, hi)`` of one cached record
    shard (None: no examples).

    ``job``: the split, the record shard's file, the cache's cipher and the rows. Only for
    a model with ``per_record_examples``: its examples of some records are then those of
    the records within the whole split, so they can be made anywhere, in any order.
    """
    from .arrow import ArrowTable, ipc_file_bytes

    split, file, cipher, lo, hi = job
    if _last_table.get("file") != file:  # a worker's jobs walk through a shard in turn
        _last_table.update(file=file, table=ArrowTable([file], cipher=cipher))
    part = _last_table["table"]._open()[0].slice(lo, hi - lo)
    rows = [row for batch in part.to_batches(max_chunksize=1024) for row in batch.to_pylist()]
    out = list(model.examples(rows, split))
    return ipc_file_bytes(out, split) if out else None


class GroupJob(NamedTuple):
    """One group of a split's examples (``Model.example_groups``): made from the split's
    cached record files, written as files ``NAME-00000.arrow``, ... of ``folder``."""

    split: str
    files: list[str]
    cipher: Any
    group: Any
    folder: str
    name: str
    shard_rows: int


def makes_groups(model: Model | None) -> bool:
    """Whether ``model`` cuts its examples into groups (``Model.example_groups``)."""
    return model is not None and type(model).example_groups is not Model.example_groups


def make_group(model: Model, job: GroupJob) -> tuple[list[tuple[str, int]], Any]:
    """Write one group's examples into the cache: ``([(file, rows), ...], the group's report)``.
    The files are named after the group, so any process makes the same ones."""
    from ..storage import Storage
    from .arrow import ArrowShardWriter, ArrowTable
    from .records import RecordStream

    def tables() -> Iterator[Any]:  # a file at a time: one mapped at once, not the split
        for file in job.files:
            yield ArrowTable([file], cipher=job.cipher)._open()[0]

    writer = ArrowShardWriter(Storage(job.folder, cipher=job.cipher), job.split, job.shard_rows, job.name)
    made = model.group_example_tables(RecordStream(tables), job.split, job.group)
    while True:
        try:
            writer.add_table(next(made))
        except StopIteration as stop:
            report = stop.value
            break
    return list(zip(writer.close(), writer.file_rows)), report


class FitJob(NamedTuple):
    """The model's ``fit_table`` part of one cached training file."""

    file: str
    cipher: Any


def run_job(model: Model, job: Any) -> Any:
    """What one job of the workers' model pass gives: a fit part, a group's files and
    report, or a run of records' example shard."""
    if isinstance(job, FitJob):
        from .arrow import ArrowTable

        table = ArrowTable([job.file], cipher=job.cipher)._open()[0]
        return model.fit_table(table) if table.num_rows else None
    if isinstance(job, GroupJob):
        return make_group(model, job)
    return example_shard(model, job)


def forget_last_table() -> None:
    """Drop the record shard :func:`example_shard` keeps open (at the end of a pass)."""
    _last_table.clear()
