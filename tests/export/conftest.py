"""Fixtures of the export tests: two small trained runs, exported once per session.

``tiny_run`` trains the tiny plugin's MLP through the engine with an ``export:`` section
(all formats, int8), as ``privet run`` does. ``wide_run`` trains the Linear-heavy
``exp.wide`` classifier with named classes and exports it with ``export_run``.
Tests that damage a bundle work on a copy (``bundle_copy``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from privet.testing import make_test_host

TESTS = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
N_TRAIN = 300
FEATURES = 8


@pytest.fixture(scope="session")
def export_host() -> Any:
    host = make_test_host()
    host.load_path(TESTS)
    host.load_path(PLUGINS)
    return host


def pipeline(runs: Path, **extra: Any) -> dict[str, Any]:
    config = {
        "name": "tiny",
        "seed": 3,
        "runs_dir": str(runs),
        "plugins": {"paths": [str(TESTS), str(PLUGINS)]},
        "data": {"source": {"name": "tiny.blobs", "options": {"n": N_TRAIN, "features": FEATURES}},
                 "cleaners": ["tiny.scale"], "split": {"val": 0.2}},
        "model": {"name": "tiny.mlp"},
        "train": {"epochs": 2, "batch_size": 32, "progress": "none", "device": "cpu"},
    }
    config.update(extra)
    return config


@pytest.fixture(scope="session")
def tiny_run(export_host: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny run exported by the engine itself: all formats plus int8."""
    from privet.train.engine import run_from_config

    root = tmp_path_factory.mktemp("tiny")
    config = pipeline(root / "runs", export={"formats": ["torch_export", "onnx", "torchscript"],
                                                  "quantize": "int8"})
    run_dir, report = run_from_config(config, host=export_host, base_dir=root)
    return run_dir, report


@pytest.fixture(scope="session")
def wide_run(export_host: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The Linear-heavy classifier with class names, exported to ONNX and .pt2 with int8."""
    from privet.export.bundle import export_run
    from privet.train.engine import run_from_config

    root = tmp_path_factory.mktemp("wide")
    config = pipeline(root / "runs", name="wide", model={"name": "exp.wide"})
    config["data"]["cleaners"] = ["tiny.scale", "exp.names"]
    run_dir, _ = run_from_config(config, host=export_host, base_dir=root)
    report = export_run(run_dir, host=export_host, formats=["onnx", "torch_export"],
                        quantize="int8", log=None)
    return run_dir, report


@pytest.fixture
def bundle_copy(tiny_run: tuple[Path, dict], tmp_path: Path) -> Path:
    """A copy of the tiny run's bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_run[0] / "export", dst)
    return dst


@pytest.fixture(scope="session")
def unseen(export_host: Any) -> list[dict]:
    """40 records the runs never saw (the same blobs, further along), as the source yields them."""
    source = export_host.make("source", "tiny.blobs", {"n": N_TRAIN + 40, "features": FEATURES})
    records = [r for s in source.shards() for r in source.read(s)]
    return records[N_TRAIN:]


@pytest.fixture
def jsonl(tmp_path: Path):
    """``jsonl(records, name)`` writes a JSONL file in the test's folder and returns its path."""

    def write(records: list[Any], name: str = "in.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                for r in records), encoding="utf-8")
        return path

    return write


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture
def read_out():
    """Parse a JSONL output file."""
    return read_jsonl
