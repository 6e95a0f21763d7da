"""The shipped examples run as documented: examples/make_timeseries_data.py + the two pipelines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(folder: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "make_timeseries_data.py"), "--out",
                    str(folder / "data" / "timeseries"), "--hours", "700", "--series", "2",
                    "--rows", "1500"], check=True, capture_output=True, timeout=120)


def load(tmp_path: Path, name: str) -> dict:
    shutil.copy(EXAMPLES / name, tmp_path)
    return yaml.safe_load((tmp_path / name).read_text(encoding="utf-8"))


def test_forecast_example_handles_its_planted_mess_by_rule(host, run_pipeline, tmp_path):
    make_data(tmp_path)
    config = load(tmp_path, "timeseries_forecast.yaml")
    with pytest.warns(UserWarning, match="rows shared a timestamp"):
        out = run_pipeline(config, base_dir=tmp_path, overrides=[
            "train.epochs=1", "export=null", "data.source.options.split_time=2024-01-26T00:00:00"])
    out.assert_success()
    data = out.report["data"]
    assert data["dropped"] == {"unparseable_timestamp": 1}
    assert [e.split(": ", 1)[0] for e in data["dropped_examples"]["unparseable_timestamp"]] == [
        "series.csv:102"]
    assert data["counts"]["val"] > 0 and data["examples"]["val"] > 0
    assert data["cleaners"]["1:timeseries.impute"] == {"imputed.temperature": 1}
    assert out.report["final"]["val/mae"] < 3.0


def test_tabular_example_trains_the_mlp(host, run_pipeline, tmp_path):
    make_data(tmp_path)
    out = run_pipeline(load(tmp_path, "tabular_mlp.yaml"), base_dir=tmp_path,
                       overrides=["train.epochs=4", "export=null"])
    out.assert_success()
    assert out.report["final"]["val/accuracy"] > 0.7
