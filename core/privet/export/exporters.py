"""The three built-in exporters. torch and onnx are imported lazily, inside methods."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import attrs

from ..components import Exporter
from ..errors import ExportError

Runner = Callable[[dict[str, Any]], list[Any]]


def _dynamic_batch(example_inputs: tuple[Any, ...]) -> Any:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    return tuple({0: batch} if getattr(x, "ndim", 0) > 0 else None for x in example_inputs)


class TorchExportExporter(Exporter):
    """``torch.export`` ExportedProgram (``.pt2``) with a dynamic batch dimension."""

    suffix = ".pt2"

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str]) -> Path:
        import torch

        path = Path(out_dir) / "model.pt2"
        try:
            program = torch.export.export(module, example_inputs,
                                          dynamic_shapes=_dynamic_batch(example_inputs))
        except Exception as err:  # some models specialise the batch: retry static
            warnings.warn(f"torch.export with a dynamic batch failed ({type(err).__name__}); "
                          f"exporting with static shapes", stacklevel=2)
            program = torch.export.export(module, example_inputs)
        torch.export.save(program, str(path))
        return path

    def load(self, path: Any) -> Runner:
        import torch

        try:
            program = torch.export.load(str(path))
        except Exception as err:
            raise ExportError(f"{path}: cannot load the ExportedProgram ({err}); re-export it") from err
        module = program.module()

        def run(inputs: dict[str, Any]) -> list[Any]:
            with torch.no_grad():
                out = module(*[torch.as_tensor(v) for v in inputs.values()])
            outs = out if isinstance(out, (tuple, list)) else (out,)
            return [o.detach().cpu().numpy() for o in outs]

        return run


class OnnxExporter(Exporter):
    """ONNX through the dynamo exporter (dynamic batch); falls back to the TorchScript one."""

    suffix = ".onnx"

    @attrs.define(frozen=True)
    class Options:
        opset: int = 18
        dynamo: bool = True

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str]) -> Path:
        import torch

        path = Path(out_dir) / "model.onnx"
        dynamic_axes = {n: {0: "batch"} for n in list(input_names) + list(output_names)}
        self.used = "dynamo"
        if self.options.dynamo:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, example_inputs, str(path), dynamo=True,
                                      input_names=input_names, output_names=output_names,
                                      dynamic_shapes=_dynamic_batch(example_inputs),
                                      opset_version=self.options.opset, external_data=False)
                return path
            except Exception as err:
                warnings.warn(f"the dynamo ONNX exporter failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); falling back to "
                              f"the TorchScript-based exporter", stacklevel=2)
        self.used = "torchscript"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example_inputs, str(path), dynamo=False,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=self.options.opset)
        return path

    def load(self, path: Any) -> Runner:
        import onnx
        import onnxruntime as ort

        try:
            onnx.checker.check_model(str(path))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(f"{path}: not a valid ONNX model ({str(err).splitlines()[0]}); "
                              f"re-export it") from err
        names = [i.name for i in session.get_inputs()]

        def run(inputs: dict[str, Any]) -> list[Any]:
            feed = dict(zip(names, inputs.values()))
            return session.run(None, feed)

        return run


class TorchScriptExporter(Exporter):
    """TorchScript (``torch.jit.trace`` or ``script``). Deprecated upstream; kept for users."""

    suffix = ".ts"

    @attrs.define(frozen=True)
    class Options:
        method: Literal["trace", "script"] = "trace"

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str]) -> Path:
        import torch

        warnings.warn("TorchScript is deprecated upstream in PyTorch; prefer torch_export or "
                      "onnx. Privet keeps it working while torch ships it.",
                      DeprecationWarning, stacklevel=2)
        path = Path(out_dir) / "model.ts"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.options.method == "script":
                scripted = torch.jit.script(module)
            else:
                scripted = torch.jit.trace(module, example_inputs, check_trace=False)
        scripted.save(str(path))
        return path

    def load(self, path: Any) -> Runner:
        import torch

        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ExportError(f"{path}: cannot load the TorchScript file ({err}); re-export it") from err

        def run(inputs: dict[str, Any]) -> list[Any]:
            with torch.no_grad():
                out = module(*[torch.as_tensor(v) for v in inputs.values()])
            outs = out if isinstance(out, (tuple, list)) else (out,)
            return [o.detach().cpu().numpy() for o in outs]

        return run
