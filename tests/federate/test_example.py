"""The federated example in examples/federated validates as written (data generated here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privet.federate.config import load_federation
from privet.federate.coordinator import check_pipelines

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "federated"


def test_the_example_federation_and_its_pipelines_validate(tmp_path):
    pytest.importorskip("privet_timeseries")
    from privet.plugins import load_plugins

    copy = tmp_path / "federated"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("runs", "data"))
    subprocess.run([sys.executable, str(copy / "make_data.py")], check=True, capture_output=True)
    fed = load_federation(copy / "federation.yaml")
    assert [c.name for c in fed.config.clients] == ["north", "south", "east"]
    assert fed.config.aggregation == "fedavg" and fed.config.rounds == 8
    check_pipelines(fed, load_plugins())
    assert sum(1 for _ in open(copy / "east" / "data" / "table.csv")) == 1001
