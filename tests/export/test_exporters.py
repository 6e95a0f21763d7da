"""The exporters on their own: fallbacks, warnings, dynamic axes and refusing unsafe files."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest

from privet import ExportError
from privet.export.exporters import (OnnxExporter, TorchExportExporter, TorchScriptExporter,
                                     check_pt2_is_safe)


def small_module():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


class Pooled:
    """A token model with a variable sequence length, as a text plugin would export."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(50, 8)
                self.head = nn.Linear(8, 3)

            def forward(self, tokens):
                return self.head(self.embed(tokens).mean(dim=1))

        torch.manual_seed(0)
        return Net().eval()


def run_both(runner, module, x):
    import numpy as np
    import torch

    with torch.no_grad():
        expected = module(torch.as_tensor(x)).numpy()
    (got,) = runner({"input": x})
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_falls_back_to_the_torchscript_exporter_when_dynamo_fails(tmp_path, monkeypatch):
    import numpy as np
    import torch

    real = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("unsupported operator aten::frobnicate")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    module = small_module()
    exporter = OnnxExporter(OnnxExporter.Options())
    with pytest.warns(UserWarning, match="fell back to the TorchScript-based exporter"):
        path = exporter.export(module, (torch.randn(4, 6),), tmp_path, ["input"], ["output"])
    assert exporter.used == "torchscript" and exporter.details["exporter"] == "torchscript"
    assert "aten::frobnicate" in exporter.notes[0]
    runner = exporter.load(path)
    run_both(runner, module, np.random.default_rng(0).normal(size=(9, 6)).astype(np.float32))


def test_torchscript_export_warns_that_it_is_deprecated_and_still_works(tmp_path):
    import numpy as np
    import torch

    module = small_module()
    exporter = TorchScriptExporter(TorchScriptExporter.Options())
    with pytest.warns(DeprecationWarning, match="TorchScript is deprecated upstream"):
        path = exporter.export(module, (torch.randn(4, 6),), tmp_path, ["input"], ["output"])
    assert path.suffix == ".ts"
    run_both(exporter.load(path), module, np.ones((3, 6), np.float32))


@pytest.mark.parametrize("exporter_cls", [OnnxExporter, TorchExportExporter])
def test_dynamic_axes_beyond_the_batch_let_the_sequence_length_vary(tmp_path, exporter_cls):
    import numpy as np
    import torch

    module = Pooled.build()
    exporter = exporter_cls(exporter_cls.Options())
    axes = {"tokens": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = exporter.export(module, (torch.randint(0, 50, (3, 5)),), tmp_path, ["tokens"],
                               ["logits"], dynamic_axes=axes)
    runner = exporter.load(path)
    for shape in ((2, 7), (5, 1), (1, 12)):
        tokens = np.random.default_rng(1).integers(0, 50, size=shape).astype(np.int64)
        with torch.no_grad():
            expected = module(torch.as_tensor(tokens)).numpy()
        (got,) = runner({"tokens": tokens})
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_truncated_onnx_file_is_a_clear_export_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x05torch")
    with pytest.raises(ExportError, match=r"model.onnx: not a valid ONNX model .*re-export it"):
        OnnxExporter(OnnxExporter.Options()).load(path)


@pytest.fixture
def pt2(tmp_path) -> Path:
    import torch

    exporter = TorchExportExporter()
    return exporter.export(small_module(), (torch.randn(4, 6),), tmp_path, ["input"], ["output"])


def rewrite(path: Path, change) -> None:
    """Rewrite the zip at ``path``, passing each (name, bytes) through ``change``."""
    with zipfile.ZipFile(path) as zf:
        items = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in items:
            zf.writestr(info, change(info.filename, data))


def test_truncated_pt2_is_a_clear_export_error(pt2):
    pt2.write_bytes(pt2.read_bytes()[:500])
    with pytest.raises(ExportError, match="corrupted or truncated .pt2 archive"):
        TorchExportExporter().load(pt2)


def test_pt2_with_weights_marked_for_unpickling_is_refused(pt2):
    def mark(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                entry["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    rewrite(pt2, mark)
    with pytest.raises(ExportError, match="holds pickled tensors .* refuses to unpickle"):
        TorchExportExporter().load(pt2)


class _Payload:
    """Unpickling this would create a file: the test checks it never happens."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (shutil.copyfile, (os.devnull, self.target))


def test_pt2_with_objects_in_its_sample_inputs_is_refused_without_running_them(pt2, tmp_path):
    import io

    import torch

    target = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save((_Payload(str(target)),), buffer)  # what a tampered archive would carry
    payload = buffer.getvalue()

    def plant(name: str, data: bytes) -> bytes:
        return payload if "/sample_inputs/" in name else data

    rewrite(pt2, plant)
    with pytest.raises(ExportError, match="sample inputs hold objects other than tensors"):
        check_pt2_is_safe(pt2)
    assert not target.exists()


def test_a_clean_pt2_passes_the_safety_check_and_runs(pt2):
    import numpy as np

    check_pt2_is_safe(pt2)
    run_both(TorchExportExporter().load(pt2), small_module(), np.ones((5, 6), np.float32))


def test_old_pt2_layout_without_archive_format_is_refused(tmp_path):
    path = tmp_path / "old.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("version", "1.0")
        zf.writestr("serialized_exported_program.json", "{}")
    with pytest.raises(ExportError, match="no archive_format"):
        check_pt2_is_safe(path)


def test_onnx_export_prints_nothing_on_stdout(tmp_path, capsys):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        OnnxExporter(OnnxExporter.Options()).export(small_module(), (torch.randn(4, 6),), tmp_path,
                                                    ["input"], ["output"])
    assert capsys.readouterr().out == ""  # the dynamo exporter's progress lines are swallowed
