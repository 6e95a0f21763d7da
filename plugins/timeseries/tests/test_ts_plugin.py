"""The plugin as Privet sees it: entry point, components, start-up cost, starter pipeline."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import attrs
import yaml

from privet.config import load_config, validate_components
from privet_timeseries import plugin

KINDS = {
    "source": {"timeseries.csv", "timeseries.parquet"},
    "cleaner": {"timeseries.impute", "timeseries.outliers", "timeseries.categorical",
                "timeseries.scale", "timeseries.regularize", "timeseries.calendar"},
    "augmenter": {"timeseries.jitter", "timeseries.magnitude_scale", "timeseries.window_slice",
                  "timeseries.time_warp", "timeseries.resample"},
    "model": {"timeseries.lstm", "timeseries.tft", "timeseries.mlp"},
}


def test_entry_point_names_the_hook_module():
    [ep] = [e for e in importlib.metadata.entry_points(group="privet.plugins") if e.name == "timeseries"]
    assert ep.value == "privet_timeseries.plugin"


def test_every_component_is_registered_documented_with_attrs_options(host):
    for kind, names in KINDS.items():
        assert set(host.catalog.by_plugin("timeseries")[kind]) == names
        for name in names:
            entry = host.catalog.get(kind, name)
            assert entry.summary, f"{name} has no docstring"
            assert attrs.has(entry.cls.Options)
    options = host.make("model", "timeseries.lstm", {}).options
    try:
        options.horizon = 3
    except attrs.exceptions.FrozenInstanceError:
        pass
    else:
        raise AssertionError("model options can be changed after validation")


def test_loading_the_plugin_does_not_import_torch():
    code = "import sys, privet_timeseries.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_starter_pipeline_is_a_valid_pipeline_for_timeseries_only(host, tmp_path):
    text = plugin.starter_pipeline("timeseries")
    assert plugin.starter_pipeline("text") is None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "series.csv").write_text("timestamp,value\n2024-01-01,1\n")
    (tmp_path / "pipeline.yaml").write_text(text)
    loaded = load_config(tmp_path / "pipeline.yaml")
    validate_components(loaded, host.catalog)
    assert loaded.config.model.name == "timeseries.lstm"
    assert yaml.safe_load(text)["data"]["split"] == {"method": "field", "field": "split"}
