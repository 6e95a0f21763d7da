"""``privet export`` on the command line, and prediction with a fixed-batch artifact."""

from __future__ import annotations

import json
import shutil

import pytest

from privet.export.bundle import Bundle
from privet.export.predict import Predictor


def privet(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from privet.cli import main

    monkeypatch.setenv("PRIVET_LOAD_PLUGINS", "")  # built-ins + the run's own plugin folders
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_export_command_writes_the_bundle_and_records_it_in_report_json(tiny_run, tmp_path,
                                                                        monkeypatch, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir, symlinks=True)
    code, out, err = privet(["export", str(run_dir), "--format", "torch_export"], monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"bundle: {run_dir / 'export'}"
    assert lines[1].split()[:2] == ["torch_export", "model.pt2"] and "verified" in lines[1]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == [
        "bundle.json", "model.pt2", "model_state.json", "report.json"]
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["export"]["artifacts"]) == ["torch_export"]
    assert report["status"] == "completed"  # the rest of the run's report is kept


def test_export_command_defaults_to_onnx_without_an_export_section(wide_run, tmp_path, monkeypatch,
                                                                   capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(wide_run[0], run_dir, symlinks=True)
    code, out, err = privet(["export", str(run_dir), "--json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert list(report["artifacts"]) == ["onnx"]
    assert report["artifacts"]["onnx"]["verified"] is True
    assert report["quantize"] is None


def test_export_command_on_a_folder_that_is_no_run_fails_with_one_line(tmp_path, monkeypatch, capsys):
    code, out, err = privet(["export", str(tmp_path)], monkeypatch, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "is not a Privet run folder" in err


def test_unknown_quantization_is_rejected_by_the_command(tiny_run, monkeypatch, capsys):
    code, _, err = privet(["export", str(tiny_run[0]), "--quantize", "int4"], monkeypatch, capsys)
    assert code == 2 and "int4" in err


def test_a_fixed_batch_artifact_is_fed_padded_batches(bundle_copy, export_host, unseen):
    shutil.copytree(bundle_copy, bundle_copy.parent / "unchanged")
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    meta["artifacts"]["onnx"]["dynamic"] = False  # as when torch.export had to specialise
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    predictor = Predictor(Bundle.open(bundle_copy), export_host, artifact="onnx", batch_size=64)
    assert predictor.batch_size == 4  # the example batch the bundle was exported with
    sizes = []
    real_run = predictor.run

    def spy(feed):
        sizes.append(len(next(iter(feed.values()))))
        return real_run(feed)

    predictor.run = spy
    rows = list(predictor.predict(iter([(f"r{i}", dict(r)) for i, r in enumerate(unseen[:7])])))
    assert [r["location"] for r in rows] == [f"r{i}" for i in range(7)]
    assert sizes == [4, 4]
    dynamic = Predictor(Bundle.open(bundle_copy.parent / "unchanged"), export_host, artifact="onnx")
    expected = list(dynamic.predict(iter([(f"r{i}", dict(r)) for i, r in enumerate(unseen[:7])])))
    assert rows == expected
