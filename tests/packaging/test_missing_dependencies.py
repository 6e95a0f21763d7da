"""A feature whose package is missing says, in one line, what to install.

torchao is an extra (``privet[int8]``); onnx, onnxscript and onnxruntime are dependencies
of the core, missing only from an environment installed with ``--no-deps`` or pruned.
Each is hidden here (``sys.modules[name] = None`` makes its import fail as if it were not
installed), and the error or note must name the install command.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

import privet
from privet.export.exporters import OnnxExporter, onnx_runner
from privet.export.quantize import INSTALL_INT8, load_torchao, torchao_available


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_the_int8_extra_is_named_as_pyproject_declares_it() -> None:
    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    assert INSTALL_INT8 == "pip install 'privet[int8]'"
    assert any(r.startswith("torchao") for r in extras["int8"])


def test_torchao_missing_names_the_int8_extra(monkeypatch, tmp_path) -> None:
    hide(monkeypatch, "torchao", "torchao.quantization")

    assert not torchao_available()
    with pytest.raises(privet.ExportError) as err:
        load_torchao(object(), tmp_path / "model.int8.safetensors")

    message = str(err.value)
    assert "\n" not in message
    assert "model.int8.safetensors: this artifact needs torchao; pip install 'privet[int8]'" in message


def test_onnx_missing_at_export_names_what_to_install_before_torch_fails(monkeypatch, tmp_path) -> None:
    hide(monkeypatch, "onnx", "onnxscript")

    with pytest.raises(privet.ExportError) as err:
        OnnxExporter().export(None, (), tmp_path, ["x"], ["y"])

    assert str(err.value) == ("onnx, onnxscript not installed; ONNX export and predict need them "
                              "(dependencies of privet): pip install onnx onnxscript")
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_missing_at_predict_names_what_to_install(monkeypatch, tmp_path) -> None:
    hide(monkeypatch, "onnxruntime")

    with pytest.raises(privet.ExportError, match=r"^onnxruntime not installed; ONNX export and "
                                                 r"predict need it \(dependencies of privet\): "
                                                 r"pip install onnxruntime$"):
        onnx_runner(tmp_path / "model.onnx")
