"""Windows per second: Privet's prepared window examples vs hand-written numpy loaders.

Same data, same window shape, same batch size, same shuffled order, both ending in
torch tensors ready for a model:

* ``privet``: window examples prepared by ``timeseries.lstm``'s ``examples()`` into the
  engine's memory-mapped Arrow cache, read through the engine's own loader
  (``privet.data.loader.make_loader``: sampler -> the batch's columns -> the model's
  ``encode_columns``, one numpy gather of the windows' bytes per batch).
* ``numpy, per item``: the loader people usually write: a ``Dataset`` whose
  ``__getitem__`` slices one window out of the series array, batched by a ``DataLoader``
  with the default collate.
* ``numpy, vectorised``: the fastest hand-written loader: one fancy-indexing gather per
  batch (``values[starts[:, None] + arange(L)]``), no per-window Python at all.

Run::

    python benchmarks/bench_ts_windows.py                  # print the results
    python benchmarks/bench_ts_windows.py --write docs/benchmarks-timeseries.md
    python benchmarks/bench_ts_windows.py --check          # exit 1 if the target is missed

The target: privet >= 0.9x the per-item numpy loader.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import replace_results


PRIVET = "privet: cache -> encode_columns (the engine's loader)"
PER_ITEM = "numpy, per item: Dataset + DataLoader"
VECTORISED = "numpy, vectorised gather"
TARGET = 0.9
BEGIN = "<!-- results: written by benchmarks/bench_ts_windows.py --write -->"
END = "<!-- end of results -->"


def prepare(rows: int, length: int, horizon: int, folder: Path):
    """The series as one array, and the same windows as Privet examples in an Arrow cache."""
    from privet.data.arrow import ArrowShardWriter, ArrowTable
    from privet.testing import make_test_host
    from privet_timeseries import plugin
    from privet_timeseries.synthetic import seasonal_rows

    host = make_test_host()
    host.register_plugin(plugin, "timeseries")
    cal = host.make("cleaner", "timeseries.calendar", {"features": ["hour", "day_of_week"]})
    records = []
    for i, row in enumerate(seasonal_rows(rows, seed=0)):
        records.append(cal.clean({"time": i * 3600.0, "series": "s0", "value": row["value"],
                                  "temperature": row["temperature"]}))
    model = host.make("model", "timeseries.lstm", {"input_length": length, "horizon": horizon})
    model.fit(records)
    writer = ArrowShardWriter(folder, "train", 50_000)
    for ex in model.examples(records, "train"):
        writer.add(ex)
    table = ArrowTable(writer.close())
    cols = model.state["targets"] + model.state["features"] + model.state["known"]
    values = np.array([[r[c] for c in cols] for r in records], np.float32)
    return model, table, values, len(model.state["targets"]) + len(model.state["features"])


def time_privet(model, table, batch_size: int, seed: int) -> tuple[float, int]:
    from privet.data.loader import make_loader

    loader = make_loader(table, model, [], batch_size=batch_size, seed=seed, train=True,
                         shuffle=True, num_workers=0)
    loader.batch_sampler.set_epoch(0)
    n = 0
    t0 = time.perf_counter()
    for loaded in loader:
        n += loaded.batch["past"].shape[0]
    return time.perf_counter() - t0, n


class SlidingWindows(torch.utils.data.Dataset):
    """The usual hand-written dataset: one window sliced out of the array per item."""

    def __init__(self, values: np.ndarray, n_observed: int, length: int, horizon: int) -> None:
        self.values, self.p, self.length, self.horizon = values, n_observed, length, horizon

    def __len__(self) -> int:
        return len(self.values) - self.length - self.horizon + 1

    def __getitem__(self, i: int):
        cut, end = i + self.length, i + self.length + self.horizon
        v = self.values
        return {"past": v[i:cut, : self.p], "known": v[i:end, self.p:], "future": v[cut:end, :1]}


def time_numpy_per_item(values, n_observed, length, horizon, batch_size, order) -> tuple[float, int]:
    ds = SlidingWindows(values, n_observed, length, horizon)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=0)
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["past"].shape[0]
    return time.perf_counter() - t0, n


def time_numpy_vectorised(values, n_observed, length, horizon, batch_size, order) -> tuple[float, int]:
    span = np.arange(length + horizon)
    n = 0
    t0 = time.perf_counter()
    for i in range(0, len(order), batch_size):
        starts = np.asarray(order[i:i + batch_size])
        block = values[starts[:, None] + span]                       # (B, L+H, C)
        batch = {"past": torch.from_numpy(np.ascontiguousarray(block[:, :length, :n_observed])),
                 "known": torch.from_numpy(np.ascontiguousarray(block[:, :, n_observed:])),
                 "future": torch.from_numpy(np.ascontiguousarray(block[:, length:, :1]))}
        n += batch["past"].shape[0]
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, help="put the results into this markdown file")
    parser.add_argument("--check", action="store_true", help="exit 1 if below the target")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, table, values, p = prepare(args.rows, args.length, args.horizon, Path(tmp))
        prep_s = time.perf_counter() - t0
        windows = len(table)
        from privet.data.loader import epoch_order

        order = epoch_order(windows, 0, 0)  # the engine's own shuffled order, for every loader
        results: dict[str, float] = {}
        runs = {
            PRIVET: lambda: time_privet(model, table, args.batch_size, 0),
            PER_ITEM: lambda: time_numpy_per_item(
                values, p, args.length, args.horizon, args.batch_size, order),
            VECTORISED: lambda: time_numpy_vectorised(
                values, p, args.length, args.horizon, args.batch_size, order),
        }
        for name, fn in runs.items():
            best = min(fn()[0] for _ in range(args.repeats))
            results[name] = windows / best
    base = results[PRIVET]
    lines = [
        f"{windows:,} windows of {args.length} + {args.horizon} steps x {values.shape[1]} channels "
        f"(1 target, 1 observed covariate, 4 calendar features), batch {args.batch_size}, the "
        f"engine's shuffled order, best of {args.repeats}, one process and one torch thread. "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the start. "
        f"Preparing the windows into the cache took {prep_s:.1f} s.",
        "",
        "| loader | windows/s | privet / loader |",
        "|---|---:|---:|",
        *[f"| {name} | {rate:,.0f} | {base / rate:.2f}x |" for name, rate in results.items()],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_results(args.write, text + "\n", BEGIN, END)
    ratio = base / results[PER_ITEM]
    if args.check and ratio < TARGET:
        print(f"below target: {ratio:.2f}x < {TARGET}x", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
