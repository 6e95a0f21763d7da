"""Builds a small federation on disk: three clients with non-IID label skew.

Each client gets its own data folder (JSON Lines of Gaussian blobs sharing one set of
class centres), its own pipeline file (the tiny test plugin's MLP and its fitted scaler)
and every record carries ``split: train|val``, so the union of the clients' validation
records is exactly the validation split of a centralised run over the union.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TESTS = Path(__file__).resolve().parents[1]
#: Client -> its share of each label: disjoint records, skewed labels.
SKEW = {"a": [0.8, 0.1, 0.1], "b": [0.1, 0.8, 0.1], "c": [0.1, 0.1, 0.8]}


def write_client_data(folder: Path, name: str, n: int, *, seed: int = 0, noise: float = 1.0,
                      val: float = 0.25) -> None:
    centers = np.random.default_rng(1234).normal(0, 1.0, size=(3, 6))
    rng = np.random.default_rng([seed, ord(name[0])])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "records.jsonl", "w") as fh:
        for i in range(n):
            label = int(rng.choice(3, p=SKEW[name]))
            x = centers[label] + rng.normal(0, noise, size=6)
            split = "val" if i < int(n * val) else "train"
            fh.write(json.dumps({"x": [round(float(v), 5) for v in x], "label": label,
                                 "split": split}) + "\n")


def pipeline(paths: list[str], *, epochs: int = 1, lr: float = 0.03, seed: int = 0,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = {
        "name": "client", "seed": seed, "runs_dir": "runs",
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "jsonl", "options": {"paths": paths}},
                 "cleaners": [{"name": "tiny.scale"}],
                 "split": {"method": "field", "field": "split"}},
        "model": {"name": "tiny.mlp", "options": {"hidden": 16}},
        "train": {"epochs": epochs, "batch_size": 16, "device": "cpu", "progress": "none",
                  "optimizer": {"name": "adamw", "lr": lr},
                  "deterministic": True, "log_every_n_steps": 5},
    }
    cfg.update(extra or {})
    return cfg


#: Examples per client: unequal, so FedAvg's weighting by examples shows.
SIZES = {"a": 160, "b": 200, "c": 240}


def make_federation(root: Path, *, rounds: int = 3, local_epochs: int = 1,
                    extra: dict[str, Any] | None = None,
                    pipeline_extra: dict[str, Any] | None = None) -> Path:
    """Data, pipelines and ``federation.yaml`` under ``root``; returns the file."""
    clients = []
    for name in SKEW:
        write_client_data(root / name / "data", name, SIZES[name])
        (root / name / "pipeline.yaml").write_text(yaml.safe_dump(
            pipeline(["data"], extra=pipeline_extra)))
        clients.append({"name": name, "pipeline": f"{name}/pipeline.yaml"})
    fed = {"name": "fed", "runs_dir": "runs", "seed": 7, "rounds": rounds,
           "local_epochs": local_epochs, "clients": clients, **(extra or {})}
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(fed, sort_keys=False))
    return path
