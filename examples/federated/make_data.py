"""Writes three hospitals' tables for the federated example (non-IID label skew).

    python examples/federated/make_data.py
    privet federate examples/federated/federation.yaml

Each client gets its own folder ``CLIENT/data/table.csv``: six measurements and a label
(0, 1 or 2) drawn from class centres shared by all, but each client sees mostly one
label (80%), as sites with different patient populations do.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SKEW = {"north": [0.8, 0.1, 0.1], "south": [0.1, 0.8, 0.1], "east": [0.1, 0.1, 0.8]}
SIZES = {"north": 600, "south": 800, "east": 1000}


def main() -> None:
    centers = np.random.default_rng(1234).normal(0, 1.0, size=(3, 6))
    for name, share in SKEW.items():
        rng = np.random.default_rng([7, ord(name[0])])
        folder = HERE / name / "data"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "table.csv", "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow([f"m{i}" for i in range(6)] + ["label"])
            for _ in range(SIZES[name]):
                label = int(rng.choice(3, p=share))
                x = (centers[label] + rng.normal(0, 1.0, size=6)) * 10 + 50  # raw units
                out.writerow([f"{v:.3f}" for v in x] + [label])
        print(f"wrote {folder / 'table.csv'} ({SIZES[name]} rows)")


if __name__ == "__main__":
    main()
