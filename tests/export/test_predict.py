"""``privet predict``: same predictions as eager, error entries, and bundles that refuse to load."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from privet import ExportError, UsageError
from privet.export.bundle import Bundle
from privet.export.predict import predict_path


def eager_probabilities(run_dir: Path, host, records: list[dict]):
    """What the trained module gives on the records, cleaned with the run's fitted cleaners."""
    import torch

    from privet.train.loading import load_cleaners, load_trained

    _model, module = load_trained(run_dir, host)
    [scale] = [c for c in load_cleaners(run_dir, host) if c.name == "tiny.scale"]
    x = torch.tensor([[v * scale.scale for v in r["x"]] for r in records], dtype=torch.float32)
    with torch.no_grad():
        return torch.softmax(module(x), dim=1).numpy()


@pytest.mark.parametrize("artifact", ["onnx", "torch_export", "torchscript"])
def test_predictions_match_the_eager_model_on_unseen_records(
        tiny_run, export_host, unseen, jsonl, read_out, artifact):
    import numpy as np

    run_dir, _ = tiny_run
    out = run_dir.parent / f"pred-{artifact}.jsonl"
    with open(out, "w") as fh:
        summary = predict_path(run_dir / "export", jsonl(unseen), fh, host=export_host,
                               artifact=artifact, batch_size=16,
                               trust_code=artifact != "onnx")  # the others are programs
    assert summary.as_dict() == {"artifact": artifact, "predicted": 40, "errors": {}, "total": 40}
    rows = read_out(out)
    assert [r["id"] for r in rows] == [r["id"] for r in unseen]
    assert [r["location"] for r in rows] == [f"in.jsonl:{i}" for i in range(1, 41)]
    probs = np.array([r["probabilities"] for r in rows])
    expected = eager_probabilities(run_dir, export_host, unseen)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert [r["label"] for r in rows] == expected.argmax(1).tolist()
    accuracy = np.mean([r["label"] == u["label"] for r, u in zip(rows, unseen)])
    assert accuracy > 0.5  # better than chance (1/3): labels line up with the classes


def test_int8_artifacts_predict_the_same_classes_as_fp32(wide_run, export_host, unseen, jsonl):
    run_dir, report = wide_run
    path = jsonl(unseen, "in.jsonl")
    results = {}
    for artifact in [k for k in ("onnx", "onnx_int8", "torch_int8") if k in report["artifacts"]]:
        buf = io.StringIO()
        predict_path(run_dir / "export", path, buf, host=export_host, artifact=artifact)
        results[artifact] = [json.loads(line)["label"] for line in buf.getvalue().splitlines()]
    base = results.pop("onnx")
    for name, labels in results.items():
        same = sum(a == b for a, b in zip(base, labels)) / len(base)
        assert same >= 0.95, name


def test_class_names_and_training_only_cleaners_apply_at_predict(wide_run, export_host, unseen,
                                                                 jsonl, read_out, tmp_path):
    # inputs have no label: exp.names (training only) is skipped, exp.wide encodes without one
    run_dir, _ = wide_run
    out = tmp_path / "out.jsonl"
    with open(out, "w") as fh:
        predict_path(run_dir / "export", jsonl([{"x": r["x"]} for r in unseen]), fh, host=export_host)
    rows = read_out(out)
    assert len(rows) == 40 and all("error" not in r for r in rows)
    assert {r["label"] for r in rows} <= {"class-0", "class-1", "class-2"}
    hits = sum(r["label"] == f"class-{u['label']}" for r, u in zip(rows, unseen))
    assert hits / 40 > 0.9
    assert json.loads((run_dir / "export" / "labels.json").read_text()) == ["class-0", "class-1",
                                                                             "class-2"]


def test_bad_records_get_error_entries_in_input_order_and_the_rest_are_predicted(
        wide_run, export_host, unseen, jsonl, read_out, tmp_path):
    run_dir, _ = wide_run
    good = [json.dumps({"x": r["x"], "id": r["id"]}) for r in unseen[:3]]
    lines = [good[0], "{not json", json.dumps({"x": [1.0, 2.0]}), good[1], "[1, 2]",
             json.dumps({"id": "no-x"}), "", good[2]]
    out = tmp_path / "out.jsonl"
    with open(out, "w") as fh:
        summary = predict_path(run_dir / "export", jsonl(lines), fh, host=export_host, batch_size=2)
    rows = read_out(out)
    assert [r["location"] for r in rows] == ["in.jsonl:1", "in.jsonl:2", "in.jsonl:3", "in.jsonl:4",
                                             "in.jsonl:5", "in.jsonl:6", "in.jsonl:8"]
    assert [r.get("error") for r in rows] == [None, "malformed_json", "bad_features", None,
                                              "not_an_object", "missing_field", None]
    assert [r["id"] for r in rows if "label" in r] == [r["id"] for r in unseen[:3]]
    assert rows[5] == {"location": "in.jsonl:6", "id": "no-x", "error": "missing_field",
                       "detail": "no field 'x'"}
    assert summary.predicted == 3
    assert dict(summary.errors) == {"malformed_json": 1, "bad_features": 1, "not_an_object": 1,
                                    "missing_field": 1}


def test_csv_input_is_read_with_line_numbers(tiny_run, export_host, tmp_path, read_out):
    run_dir, _ = tiny_run
    header = ",".join(["label"] + [f"x{i}" for i in range(8)])
    path = tmp_path / "in.csv"
    path.write_text(header + "\n0," + ",".join(["0.5"] * 8) + "\n1,2\n", encoding="utf-8")
    buf = io.StringIO()
    predict_path(run_dir / "export", path, buf, host=export_host)
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    # tiny.mlp reads the list field 'x', which a flat CSV row does not have
    assert rows[0] == {"location": "in.csv:2", "error": "missing_field", "detail": "no field 'x'"}
    assert rows[1]["location"] == "in.csv:3" and rows[1]["error"] == "wrong_column_count"


def test_a_run_folder_can_be_given_instead_of_its_export_folder(tiny_run, export_host, unseen, jsonl):
    buf = io.StringIO()
    summary = predict_path(tiny_run[0], jsonl(unseen[:2]), buf, host=export_host)
    assert summary.predicted == 2 and summary.artifact == "onnx"


# --- bundles that must not load --------------------------------------------------------------


def test_corrupted_artifact_is_refused_by_checksum(bundle_copy, export_host, unseen, jsonl):
    data = bytearray((bundle_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"model.onnx: checksum mismatch \(onnx artifact is corrupted"):
        predict_path(bundle_copy, jsonl(unseen[:1]), io.StringIO(), host=export_host)


def test_truncated_artifact_is_refused(bundle_copy, export_host, unseen, jsonl):
    path = bundle_copy / "model.pt2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ExportError, match="model.pt2: checksum mismatch"):
        predict_path(bundle_copy, jsonl(unseen[:1]), io.StringIO(), host=export_host,
                     artifact="torch_export", trust_code=True)


def test_bundle_from_a_newer_format_version_is_refused(bundle_copy, export_host, unseen, jsonl):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    meta["format_version"] = 99
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="bundle format version 99 is newer than this privet reads"):
        predict_path(bundle_copy, jsonl(unseen[:1]), io.StringIO(), host=export_host)


@pytest.mark.parametrize("name", ["model_state.json"])
def test_missing_preprocessing_file_is_refused(bundle_copy, export_host, unseen, jsonl, name):
    (bundle_copy / name).unlink()
    with pytest.raises(ExportError, match=f"{name}: missing preprocessing file"):
        Bundle.open(bundle_copy)


def test_missing_labels_file_of_a_classifier_with_names_is_refused(wide_run, tmp_path):
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(wide_run[0] / "export", dst)
    (dst / "labels.json").unlink()
    with pytest.raises(ExportError, match=r"labels.json: missing preprocessing file \(labels\)"):
        Bundle.open(dst)


def test_folder_without_bundle_json_is_not_a_bundle(tmp_path):
    with pytest.raises(ExportError, match="not an export bundle"):
        Bundle.open(tmp_path)


def test_unknown_artifact_lists_those_in_the_bundle(tiny_run, export_host, unseen, jsonl):
    with pytest.raises(ExportError, match=r"no 'tensorrt' artifact \(have: torch_export, onnx"):
        predict_path(tiny_run[0], jsonl(unseen[:1]), io.StringIO(), host=export_host,
                     artifact="tensorrt")


def test_unreadable_input_kind_is_a_usage_error(tiny_run, export_host, tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(UsageError, match="cannot read this kind of file"):
        predict_path(tiny_run[0], path, io.StringIO(), host=export_host)


@pytest.mark.parametrize("artifact", ["onnx", "torch_export", "onnx_int8"])
def test_bundles_load_and_predict_without_unpickling_anything(
        tiny_run, export_host, unseen, jsonl, monkeypatch, artifact):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle must not be unpickled")

    real_load = torch.load

    def weights_only_load(*args, **kwargs):  # torch's restricted loader for plain tensors only
        if kwargs.get("weights_only") is not True:
            refuse()
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", weights_only_load)
    buf = io.StringIO()
    summary = predict_path(tiny_run[0], jsonl(unseen[:5]), buf, host=export_host, artifact=artifact,
                           trust_code=artifact == "torch_export")
    assert summary.predicted == 5


# --- the command line ------------------------------------------------------------------------


def _privet(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from privet.cli import main

    here = Path(__file__).resolve().parent
    # built-ins + the test plugin folders: a bundle never names plugin code to load
    monkeypatch.setenv("PRIVET_LOAD_PLUGINS", "")
    monkeypatch.setenv("PRIVET_PLUGIN_PATHS", "")  # restored after the test
    with pytest.raises(SystemExit) as exit_info:
        main(["--plugin-dir", str(here.parent), "--plugin-dir", str(here / "plugins"), *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_predict_command_writes_jsonl_and_a_summary(tiny_run, unseen, jsonl, tmp_path, monkeypatch,
                                                    capsys, read_out):
    out = tmp_path / "preds" / "out.jsonl"
    lines = [json.dumps(r) for r in unseen[:4]] + ["oops"]
    code, _, err = _privet(["predict", str(tiny_run[0] / "export"), str(jsonl(lines)), "--out",
                            str(out)], monkeypatch, capsys)
    assert code == 0
    assert err.strip() == (f"predicted 4 of 5 records with onnx; errors: malformed_json: 1 -> {out}")
    rows = read_out(out)
    assert len(rows) == 5 and rows[4]["error"] == "malformed_json"


def test_predict_command_exits_1_when_no_record_was_predicted(tiny_run, jsonl, tmp_path,
                                                             monkeypatch, capsys, read_out):
    out = tmp_path / "out.jsonl"
    code, _, err = _privet(["predict", str(tiny_run[0] / "export"),
                            str(jsonl(["oops", "{}", "[1]"])), "--out", str(out)], monkeypatch, capsys)
    assert code == 1
    assert err.startswith("predicted 0 of 3 records with onnx; errors: ")
    assert [r["error"] for r in read_out(out)] == ["malformed_json", "missing_field", "not_an_object"]


def test_predict_command_with_strict_exits_1_when_any_record_failed(tiny_run, unseen, jsonl,
                                                                    monkeypatch, capsys):
    lines = [json.dumps(r) for r in unseen[:2]] + ["oops"]
    code, out, err = _privet(["predict", str(tiny_run[0] / "export"), str(jsonl(lines)), "--strict"],
                             monkeypatch, capsys)
    assert code == 1 and "predicted 2 of 3 records" in err
    assert len(out.splitlines()) == 3  # the predictions are still written
    code, _, _ = _privet(["predict", str(tiny_run[0] / "export"), str(jsonl(lines[:2])), "--strict"],
                         monkeypatch, capsys)
    assert code == 0


def test_predict_command_fails_with_one_line_and_exit_2_on_a_damaged_bundle(
        bundle_copy, unseen, jsonl, monkeypatch, capsys):
    (bundle_copy / "model.onnx").write_bytes(b"\x08\x07garbage")
    code, out, err = _privet(["predict", str(bundle_copy), str(jsonl(unseen[:1]))], monkeypatch, capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("privet: error: ") and "model.onnx: checksum mismatch" in err


def test_predict_in_a_fresh_process_refuses_a_newer_bundle_with_exit_2(bundle_copy, unseen, jsonl):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    meta["format_version"] = 2
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    env = {**os.environ, "PRIVET_LOAD_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-m", "privet", "predict", str(bundle_copy),
                           str(jsonl(unseen[:1]))], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"privet: error: {bundle_copy / 'bundle.json'}: bundle format version 2 is newer than this "
        f"privet reads (1); upgrade privet (written by privet {meta['privet_version']})"]


def test_a_record_the_artifact_cannot_run_is_isolated_from_its_batch(tiny_run, export_host, unseen,
                                                                     jsonl, read_out, tmp_path):
    # nine features instead of eight: encoding works, the batch cannot be stacked, and the
    # record alone does not fit the exported input shape
    lines = [json.dumps(unseen[0]), json.dumps({"x": [0.1] * 9, "label": 0, "id": "wide"}),
             json.dumps(unseen[1])]
    out = tmp_path / "out.jsonl"
    with open(out, "w") as fh:
        summary = predict_path(tiny_run[0], jsonl(lines), fh, host=export_host)
    rows = read_out(out)
    assert [r.get("error") for r in rows] == [None, "prediction_failed", None]
    assert rows[1]["id"] == "wide" and rows[1]["detail"]
    assert summary.predicted == 2
