"""Export bundles: every format verified against eager, int8 sizes and metrics, bundle.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from privet import ConfigError, ExportError
from privet.export.bundle import BUNDLE_VERSION, export_run, sha256_of
from privet.export.quantize import torchao_available
from privet.export.verify import TOLERANCE


def test_run_with_export_section_writes_a_verified_bundle_for_every_format(tiny_run):
    run_dir, report = tiny_run
    export = report["export"]
    assert set(export["artifacts"]) >= {"torch_export", "onnx", "torchscript", "onnx_int8"}
    for name in ("torch_export", "onnx", "torchscript"):
        art = export["artifacts"][name]
        assert art["verified"] is True, art
        assert (run_dir / "export" / art["file"]).stat().st_size == art["size_bytes"] > 0
        checks = art["verification"]
        # traced on 4 examples, checked again on a real validation batch of another size
        assert checks["example_inputs"]["batch"] == 4
        assert checks["validation"]["batch"] > 4
        for check in (checks["example_inputs"], checks["validation"]):
            assert check["ok"] is True
            assert check["max_abs_diff"] <= TOLERANCE["atol"]
    assert export["tolerance"] == TOLERANCE
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["export"]["artifacts"]["onnx"]["file"] == "model.onnx"


def test_bundle_json_describes_inputs_outputs_components_and_checksums(tiny_run):
    run_dir, _ = tiny_run
    bundle = json.loads((run_dir / "export" / "bundle.json").read_text())
    assert bundle["format"] == "privet-bundle"
    assert bundle["format_version"] == BUNDLE_VERSION
    assert bundle["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 8]}]
    assert bundle["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 3]}]
    assert bundle["task"] == "classification"
    assert bundle["model"]["name"] == "tiny.mlp"
    assert bundle["model"]["plugin"] == "tinyplugin"
    assert bundle["model"]["options"] == {"hidden": 32, "dropout": 0.0, "task": "classification"}
    state = json.loads((run_dir / "export" / "model_state.json").read_text())
    assert state == {"features": 8, "classes": 3}
    [cleaner] = bundle["cleaners"]
    assert cleaner["name"] == "tiny.scale"
    fitted = json.loads((run_dir / "state" / "components.json").read_text())["cleaners"][0]["state"]
    assert cleaner["state"] == fitted
    for art in bundle["artifacts"].values():
        assert art["sha256"] == sha256_of(run_dir / "export" / art["file"])
    assert bundle["default_artifact"] == "onnx"
    assert not list((run_dir / "export").glob("*.pkl"))
    # a bundle names no code to load: plugins by distribution, in-house ones without a path
    assert "plugin_paths" not in bundle
    assert bundle["model"]["origin"] == "plugin folder"
    assert bundle["model"]["distribution"] is None and bundle["model"]["version"] is None


def test_onnx_exported_with_dynamo_runs_any_batch_size_in_onnx_runtime(tiny_run):
    import numpy as np
    import onnx
    import onnxruntime as ort

    run_dir, report = tiny_run
    assert report["export"]["artifacts"]["onnx"]["dynamic"] is True
    path = run_dir / "export" / "model.onnx"
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    for n in (1, 7, 130):
        (out,) = session.run(None, {"input": np.zeros((n, 8), np.float32)})
        assert out.shape == (n, 3)


def test_int8_onnx_of_a_linear_heavy_model_is_at_most_035x_and_keeps_accuracy(wide_run):
    run_dir, report = wide_run
    q = report["quantization"]["onnx_int8"]
    fp32 = (run_dir / "export" / "model.onnx").stat().st_size
    int8 = (run_dir / "export" / "model.int8.onnx").stat().st_size
    assert q["fp32_size_bytes"] == fp32 and q["size_bytes"] == int8
    assert int8 <= 0.35 * fp32
    assert q["size_ratio"] == pytest.approx(int8 / fp32, abs=1e-4)
    before, after = q["metrics_before"], q["metrics_after"]
    assert set(before) == {"accuracy", "f1"} == set(after)
    assert before["accuracy"] > 0.9
    assert after["accuracy"] >= before["accuracy"] - 0.05
    assert q["agreement"]["same_class"] >= 0.95
    assert report["quantization"]["eager_metrics"]["accuracy"] == pytest.approx(before["accuracy"])
    assert report["quantization"]["validation_examples"] > 0


@pytest.mark.skipif(not torchao_available(), reason="torchao is not installed")
def test_torchao_int8_weights_are_safetensors_with_metrics_before_and_after(wide_run):
    from safetensors import safe_open

    run_dir, report = wide_run
    q = report["quantization"]["torch_int8"]
    assert q["library"] == "torchao"
    assert q["size_ratio"] <= 0.35
    assert q["metrics_after"]["accuracy"] >= q["metrics_before"]["accuracy"] - 0.05
    with safe_open(str(run_dir / "export" / "model.int8.safetensors"), "pt") as fh:
        assert "tensor_names" in fh.metadata()


def test_static_int8_calibrates_on_validation_examples(wide_run, export_host, tmp_path):
    import onnx

    run_src, _ = wide_run
    run_dir = tmp_path / "wide"
    shutil.copytree(run_src, run_dir, symlinks=True)
    report = export_run(run_dir, host=export_host, formats=["onnx"], quantize="int8-static", log=None)
    q = report["quantization"]["onnx_int8"]
    assert q["mode"] == "static"
    ops = {n.op_type for n in onnx.load(str(run_dir / "export" / "model.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert q["size_ratio"] <= 0.35
    assert q["metrics_after"]["accuracy"] >= q["metrics_before"]["accuracy"] - 0.05
    assert any("calibrated on" in n for n in report["notes"])
    # a re-export replaces the whole bundle: only what was asked for is there
    assert not (run_dir / "export" / "model.pt2").exists()


def test_quantize_without_onnx_or_torch_export_is_a_config_error(tiny_run, export_host):
    with pytest.raises(ConfigError, match="applies to the onnx and torch_export formats"):
        export_run(tiny_run[0], host=export_host, formats=["torchscript"], quantize="int8", log=None)


def test_unknown_format_names_the_known_ones(tiny_run, export_host):
    with pytest.raises(ConfigError, match="onnx"):
        export_run(tiny_run[0], host=export_host, formats=["onxx"], log=None)


def test_export_needs_the_prepared_cache(tiny_run, export_host, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir, symlinks=False, ignore=shutil.ignore_patterns("cache"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["data_cache"] = str(tmp_path / "gone")
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="prepared data cache is gone"):
        export_run(run_dir, host=export_host, formats=["onnx"], log=None)


def test_failed_verification_is_recorded_and_raised(tiny_run, export_host, tmp_path, monkeypatch):
    import privet.export.exporters as exporters

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir, symlinks=True)
    real = exporters.torch_runner

    def off_by_one(module):
        run = real(module)
        return lambda inputs: [o + 1.0 for o in run(inputs)]

    monkeypatch.setattr(exporters, "torch_runner", off_by_one)
    with pytest.raises(ExportError, match="torchscript") as err:
        export_run(run_dir, host=export_host, formats=["torchscript"], log=None)
    assert "exceeds the tolerance" in str(err.value)
    bundle = json.loads((run_dir / "export" / "bundle.json").read_text())
    assert bundle["artifacts"]["torchscript"]["verified"] is False
    assert bundle["default_artifact"] is None
    assert not list(Path(run_dir).glob(".tmp-export-*"))


class _Unmeasurable:
    """An evaluator for a model whose artifact outputs cannot be compared on validation."""

    def metrics(self, runner=None):
        return {"note": "the artifact's first output is not the model's predictions"}

    def agreement(self, runner):
        return {}


class _Measured(_Unmeasurable):
    def agreement(self, runner):
        return {"max_abs_diff": 0.02, "same_class": 1.0}


def test_an_int8_artifact_is_verified_only_when_its_quality_was_measured(tmp_path):
    from privet.export.bundle import _quantized_entry

    path = tmp_path / "model.int8.onnx"
    path.write_bytes(b"q" * 10)
    base = {"exporter": "onnx", "file": "model.onnx", "size_bytes": 40}
    unmeasured = _quantized_entry("onnx_int8", "onnx", path, base, lambda feed: [], _Unmeasurable(),
                                  None, {"library": "onnxruntime"})
    assert unmeasured["verified"] is False
    assert "not verified" in unmeasured["error"] and "first output" in unmeasured["error"]
    assert unmeasured["notes"] and "refuses" in unmeasured["notes"][0]
    measured = _quantized_entry("onnx_int8", "onnx", path, base, lambda feed: [], _Measured(),
                                None, {"library": "onnxruntime"})
    assert measured["verified"] is True and "error" not in measured
    assert measured["verification"]["agreement"]["same_class"] == 1.0


def test_export_right_after_training_reuses_the_objects_in_memory(tiny_run, export_host, tmp_path):
    from privet.runs import load_run
    from privet.train.loading import load_cleaners, load_trained

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir, symlinks=True)
    trained = load_trained(run_dir, export_host)
    cleaners = load_cleaners(run_dir, export_host)
    config = load_run(run_dir).config
    (run_dir / "config.yaml").unlink()  # nothing may read it again
    report = export_run(run_dir, host=export_host, formats=["onnx"], trained=trained,
                        cleaners=cleaners, config=config, log=None)
    assert report["artifacts"]["onnx"]["verified"] is True
    bundle = json.loads((run_dir / "export" / "bundle.json").read_text())
    assert bundle["cleaners"][0]["state"] == cleaners[0].state_dict()
    assert bundle["run"]["name"] == config["name"]
