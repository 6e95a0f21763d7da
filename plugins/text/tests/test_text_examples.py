"""The shipped examples run as documented: examples/make_text_data.py + examples/text_*.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from privet.config import load_config, validate_components

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def make_data(folder: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "make_text_data.py"), "--out", str(folder / "data" / "text"),
                    "--reviews", "1500", "--stories", "50"], check=True, capture_output=True, timeout=120)


def test_text_classifier_example_runs_end_to_end(host, run_pipeline, tmp_path):
    make_data(tmp_path)
    shutil.copy(EXAMPLES / "text_classifier.yaml", tmp_path)
    config = yaml.safe_load((tmp_path / "text_classifier.yaml").read_text(encoding="utf-8"))
    outcome = run_pipeline(config, base_dir=tmp_path, overrides=["train.epochs=1", "export=null"])
    outcome.assert_success()
    data = outcome.report["data"]
    assert data["dropped"]["malformed_json"] == 1 and data["dropped"]["empty_text"] == 1
    assert data["dropped"]["duplicate"] > 0
    pii = next(v for k, v in data["cleaners"].items() if k.endswith("text.redact_pii"))
    assert {"CARD", "EMAIL", "PHONE"} <= set(pii)
    assert outcome.report["final"]["val/accuracy"] > 0.9


def test_text_gpt_example_is_a_valid_pipeline(host, tmp_path):
    make_data(tmp_path)
    shutil.copy(EXAMPLES / "text_gpt.yaml", tmp_path)
    loaded = load_config(tmp_path / "text_gpt.yaml")
    validate_components(loaded, host.catalog)
    assert loaded.config.model.name == "text.gpt"
