"""Fixtures of the privet-timeseries tests: a host with the plugin, data the tests write
themselves (privet_timeseries.synthetic, nothing downloaded), and one torch thread.

Training tests run in-process through ``privet.testing``'s ``run_pipeline``. They pin
torch to one thread: with ``pytest -n 2`` on two cores, two threads per worker only
fight over the cores, which slows the many small ops of these models tenfold.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# The fixtures plugin authors get from privet.testing.
from privet.testing import privet_host, run_pipeline  # noqa: F401
from privet_timeseries import plugin


@pytest.fixture
def host(privet_host):
    """``privet.testing``'s host with the timeseries plugin (as its entry point registers it)."""
    privet_host.register_plugin(plugin, "timeseries")
    return privet_host


@pytest.fixture
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def write_rows(tmp_path: Path) -> Callable[..., Path]:
    """``write_rows("name.csv", rows)``: a CSV in the test's folder from dicts or lists."""

    def write(name: str, rows: list[Any], header: list[str] | None = None) -> Path:
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if header is None:
                header = list(rows[0])
                rows = [[r[k] for k in header] for r in rows]
            w.writerow(header)
            w.writerows(rows)
        return path

    return write


def read_all(source: Any) -> list[Any]:
    """Every record (and BadRecord) a source yields, over all its shards."""
    return [item for shard in source.shards() for item in source.read(shard)]


@pytest.fixture
def read() -> Callable[[Any], list[Any]]:
    return read_all
