"""Pipelines and data shared by the object-store tests (imported by the test modules)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
MARKER = "PRIVET-S3-SECRET-RECORD"
#: Fake credentials of the loopback server; the secret is grepped for in everything written.
ACCESS_KEY = "AKIAPRIVETTESTKEY0001"
SECRET_KEY = "privet-test-secret-never-written-0123456789"


def corpus(n: int = 240, seed: int = 5) -> bytes:
    """JSONL records of three separable classes, each carrying a planted private marker."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        label = i % 3
        lines.append(json.dumps({"x": [rng.gauss(2 * label, 1) for _ in range(6)], "label": label,
                                 "note": f"{MARKER}-{i}"}))
    return ("\n".join(lines) + "\n").encode()


def pipeline(folder: Path, *, data: str, runs: str, name: str = "remote", every: int = 5,
             export: list[str] | None = None, **extra: Any) -> Path:
    """A cheap tiny-MLP pipeline reading JSONL from ``data`` and writing runs to ``runs``."""
    config: dict[str, Any] = {
        "name": name, "seed": 11, "runs_dir": runs,
        "plugins": {"paths": [str(TESTS), str(PLUGINS)]},
        "data": {"source": {"name": "jsonl", "options": {"paths": [data]}},
                 "cleaners": ["tiny.scale"]},
        "model": {"name": "tiny.mlp", "options": {"hidden": 16, "dropout": 0.3}},
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "deterministic": True,
                  "progress": "log", "checkpoint": {"every_n_steps": every, "keep_last": 2}},
        "export": {"formats": export or []},
    }
    for key, value in extra.items():
        if key.startswith("data_"):
            config["data"][key[len("data_"):]] = value
        else:
            config[key] = value
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def every_file(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink())
