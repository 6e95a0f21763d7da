"""Built-in exporters: torch.export, ONNX and TorchScript (see privet.export)."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_exporters(register):
    from ..export.exporters import OnnxExporter, TorchExportExporter, TorchScriptExporter

    register("torch_export", TorchExportExporter)
    register("onnx", OnnxExporter)
    register("torchscript", TorchScriptExporter)
