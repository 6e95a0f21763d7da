"""Fixtures of the privet-dp tests: a host with the dp plugin (and the modality plugins a
test names), data the tests write themselves, and one torch thread.

Training tests run in-process through ``privet.testing``'s ``run_pipeline``, on tiny
synthetic data: a private run differs from a plain one only in what the plugin changes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from privet.testing import privet_host, run_pipeline  # noqa: F401
from privet_dp import plugin


@pytest.fixture
def host(privet_host):
    """``privet.testing``'s host with the dp plugin (as its entry point registers it)."""
    privet_host.register_plugin(plugin, "dp")
    return privet_host


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def write_table(tmp_path: Path) -> Callable[..., Path]:
    """``write_table(n, seed)``: a CSV of ``x1..x4,label`` where label = [x1 + x2 > 0]."""

    def write(n: int = 400, seed: int = 0, name: str = "table.csv", noise: float = 0.0) -> Path:
        import numpy as np

        rng = np.random.default_rng(seed)
        x = rng.normal(0, 1, (n, 4))
        y = (x[:, 0] + x[:, 1] + rng.normal(0, noise, n) > 0).astype(int)
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["x1", "x2", "x3", "x4", "label"])
            for row, label in zip(x, y):
                w.writerow([*(round(float(v), 4) for v in row), "yes" if label else "no"])
        return path

    return write


@pytest.fixture
def mlp_pipeline() -> Callable[..., dict[str, Any]]:
    """``mlp_pipeline(privacy, **train)``: the time-series MLP on ``table.csv``."""
    return _mlp_pipeline


def _mlp_pipeline(privacy: dict[str, Any] | None = None, **train: Any) -> dict[str, Any]:
    """The time-series plugin's tabular MLP on ``table.csv``, optionally private."""
    config: dict[str, Any] = {
        "name": "dp", "seed": 0,
        "data": {"source": {"name": "timeseries.csv", "options": {
                     "paths": ["table.csv"], "time_column": None, "target_columns": ["label"],
                     "categorical_columns": ["label"]}},
                 "split": {"method": "random", "val": 0.2}},
        "model": {"name": "timeseries.mlp", "options": {"hidden": [16], "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu", "progress": "none",
                  "optimizer": {"name": "sgd", "lr": 0.5}, "log_every_n_steps": 2, **train},
    }
    if privacy is not None:
        config["privacy"] = privacy
    return config
