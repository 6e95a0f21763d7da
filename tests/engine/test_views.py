"""Byte strings stored by reference (``binary_view``): written trimmed, read like any column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from privet.data.arrow import ArrowShardWriter, ArrowTable, write_arrow_file
from privet.data.views import compact_views, take_table
from privet.storage import Storage

ROW = 8  # bytes of one row of the shared block: two float32


def overlapping(rows: int, span: int, stride: int, seed: int = 0) -> tuple[pa.Array, np.ndarray]:
    """Windows of ``span`` rows every ``stride`` rows, as views into one block; and the block."""
    block = np.random.default_rng(seed).random((rows, 2), dtype=np.float32)
    starts = np.arange(0, rows - span + 1, stride)
    views = np.zeros((len(starts), 4), np.int32)
    views[:, 0] = span * ROW
    views[:, 1] = block.view(np.int32)[starts, 0]
    views[:, 3] = starts * ROW
    arr = pa.Array.from_buffers(pa.binary_view(), len(starts), [None, pa.py_buffer(views), pa.py_buffer(block)])
    arr.validate(full=True)
    return arr, block


def expected(block: np.ndarray, span: int, stride: int) -> list[bytes]:
    return [block[s:s + span].tobytes() for s in range(0, len(block) - span + 1, stride)]


def test_a_table_of_overlapping_views_is_written_with_each_row_once(tmp_path):
    arr, block = overlapping(1000, span=50, stride=5)  # each row in 10 windows
    path = write_arrow_file(Storage(tmp_path), "w.arrow", pa.table({"w": arr}))
    assert path.stat().st_size < block.nbytes + 16 * len(arr) + 4096  # not 10 copies
    back = ArrowTable([str(path)])
    assert [r["w"] for r in back.rows(list(range(len(arr))))] == expected(block, 50, 5)


def test_a_slice_writes_only_the_rows_its_views_use(tmp_path):
    arr, block = overlapping(10_000, span=20, stride=20)
    whole = write_arrow_file(Storage(tmp_path), "a.arrow", pa.table({"w": arr})).stat().st_size
    tenth = write_arrow_file(Storage(tmp_path), "b.arrow", pa.table({"w": arr}).slice(100, 50)).stat().st_size
    assert tenth < whole / 8  # an uncompacted slice would write the whole block again
    assert ArrowTable([str(tmp_path / "b.arrow")]).rows([0, 49]) == [
        {"w": expected(block, 20, 20)[100]}, {"w": expected(block, 20, 20)[149]}]


def test_compacting_combined_chunks_writes_a_shared_buffer_once():
    arr, _block = overlapping(400, span=10, stride=10)
    joined = pa.concat_tables([pa.table({"w": arr}), pa.table({"w": arr})])
    compact = compact_views(joined)
    data = compact.column("w").chunk(0).buffers()[2:]
    assert len(data) == 1 and data[0].size == 400 * ROW
    assert compact.column("w").to_pylist() == joined.column("w").to_pylist()


def test_shard_writer_files_rows_columns_and_takes_read_views_like_bytes(tmp_path):
    arr, block = overlapping(3000, span=30, stride=7, seed=1)
    want = expected(block, 30, 7)
    writer = ArrowShardWriter(tmp_path, "train", shard_rows=100)
    writer.add_table(pa.table({"i": np.arange(len(arr)), "w": arr}))
    table = ArrowTable(writer.close())
    assert len(table.files) == 5 and table.num_rows == len(want)
    order = [410, 0, 99, 100, 255, 3, 3, 301]  # across files, one repeat
    assert [r["w"] for r in table.rows(order)] == [want[i] for i in order]
    batch = table.columns(order)
    gathered = batch.numpy("w")
    assert gathered.dtype == np.uint8 and gathered.shape == (len(order), 30 * ROW)
    assert [g.tobytes() for g in gathered] == [want[i] for i in order]
    assert batch.arrow("w").to_pylist() == [want[i] for i in order]
    assert take_table(pa.table({"w": arr}), [5, 1]).column("w").to_pylist() == [want[5], want[1]]
    total = sum((tmp_path / f).stat().st_size for f in table.files)
    assert total < 2 * block.nbytes  # 30-row windows every 7 rows: four copies if stored whole


def test_short_inline_values_and_nulls_are_taken_too():
    arr = pa.array([b"abc", None, b"x" * 40, b""], pa.binary_view())
    table = pa.table({"v": arr, "n": [1, 2, 3, 4]})
    assert take_table(table, [2, 0, 1]).to_pylist() == [
        {"v": b"x" * 40, "n": 3}, {"v": b"abc", "n": 1}, {"v": None, "n": 2}]
    short = pa.array([b"ab", b"cd"], pa.binary_view())
    assert compact_views(pa.table({"v": short})).column("v").to_pylist() == [b"ab", b"cd"]


@pytest.mark.parametrize("width", [4, 12])
def test_columns_gather_inline_values_of_one_length(tmp_path, width):
    values = [bytes([i]) * width for i in range(5)]
    path = write_arrow_file(Storage(tmp_path), "s.arrow", pa.table({"v": pa.array(values, pa.binary_view())}))
    got = ArrowTable([str(path)]).columns([4, 1]).numpy("v")
    assert [g.tobytes() for g in got] == [values[4], values[1]]
