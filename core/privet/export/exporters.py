"""The three built-in exporters. torch and onnx are imported lazily, inside methods.

Each exporter writes one artifact and can load it back as a *runner*: a callable mapping
``{input name: numpy array}`` to the list of output arrays. The bundle code
(:mod:`privet.export.bundle`) uses the runner to verify the artifact against the eager
model, and ``privet predict`` uses it to predict. Loading never unpickles arbitrary
objects: ONNX is protobuf (and may name external data files only inside its own folder),
``.pt2`` archives are checked for pickled payloads first, and TorchScript archives are read
by TorchScript's own restricted loader. TorchScript and ``.pt2`` artifacts are still
programs (their ops run when called), so ``privet predict`` loads them only with
``--trust-code``; the ``.pt2`` check is a second line of defence, not the first.

Besides the base signature, the built-in ``export`` methods accept ``dynamic_axes``
(``{name: {axis: axis name}}``, see :meth:`privet.Model.dynamic_axes`) and record what
they did in ``self.notes`` (fallbacks, static shapes) and ``self.details`` (for the
export report).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import attrs

from ..components import Exporter
from ..errors import ExportError

Runner = Callable[[dict[str, Any]], list[Any]]
DynamicAxes = dict[str, dict[int, str]]


def require_modules(*modules: str) -> None:
    """One line naming what to install when a package of the ONNX path is missing.

    onnx, onnxscript and onnxruntime are dependencies of the core, so this only happens in
    an environment installed with ``--no-deps`` or pruned later; without the check the user
    sees torch's "Module onnx is not installed!" from deep inside the exporter.
    """
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed; ONNX export and predict need "
                          f"{'it' if len(missing) == 1 else 'them'} (dependencies of privet): "
                          f"pip install {' '.join(missing)}")


def default_axes(input_names: list[str], output_names: list[str]) -> DynamicAxes:
    """Axis 0 of every input and output is the batch."""
    return {n: {0: "batch"} for n in [*input_names, *output_names]}


def torch_dynamic_shapes(example_inputs: tuple[Any, ...], input_names: list[str],
                         dynamic_axes: DynamicAxes) -> tuple[Any, ...]:
    """``dynamic_shapes`` for ``torch.export``: one ``Dim`` per axis name, shared by inputs."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    out = []
    for i, x in enumerate(example_inputs):
        name = input_names[i] if i < len(input_names) else f"input_{i}"
        axes = dynamic_axes.get(name, {})
        ndim = getattr(x, "ndim", 0)
        spec = {}
        for axis, axis_name in axes.items():
            if int(axis) < ndim:
                if axis_name not in dims:
                    dims[axis_name] = Dim(_identifier(axis_name), min=1)
                spec[int(axis)] = dims[axis_name]
        out.append(spec or None)
    return tuple(out)


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in str(name))
    return cleaned if cleaned and not cleaned[0].isdigit() else f"d_{cleaned}"


def _outputs_of(out: Any) -> list[Any]:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def torch_runner(module: Any) -> Runner:
    """A runner over a callable torch module (positional inputs, in the given order)."""
    import torch

    def run(inputs: dict[str, Any]) -> list[Any]:
        with torch.no_grad():
            return _outputs_of(module(*[torch.as_tensor(v) for v in inputs.values()]))

    return run


class TorchExportExporter(Exporter):
    """``torch.export`` ExportedProgram (``.pt2``) with a dynamic batch dimension."""

    suffix = ".pt2"

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str], *,
               dynamic_axes: DynamicAxes | None = None) -> Path:
        import torch

        path = Path(out_dir) / "model.pt2"
        program = self._program(module, example_inputs, input_names, output_names, dynamic_axes)
        torch.export.save(program, str(path))
        return path

    def _program(self, module: Any, example_inputs: tuple[Any, ...], input_names: list[str],
                 output_names: list[str], dynamic_axes: DynamicAxes | None) -> Any:
        """The ExportedProgram: dynamic batch, else the example inputs' static shapes."""
        import torch

        axes = dynamic_axes if dynamic_axes is not None else default_axes(input_names, output_names)
        self.notes: list[str] = []
        self.details: dict[str, Any] = {"dynamic": True}
        try:
            program = torch.export.export(
                module, example_inputs,
                dynamic_shapes=torch_dynamic_shapes(example_inputs, input_names, axes))
        except Exception as err:  # some models specialise the batch: retry static
            note = (f"torch.export with dynamic axes failed ({type(err).__name__}: "
                    f"{_first_line(err)}); exported with the example inputs' static shapes")
            warnings.warn(note, stacklevel=2)
            self.notes.append(note)
            self.details["dynamic"] = False
            program = torch.export.export(module, example_inputs)
        return program

    def export_bytes(self, module: Any, example_inputs: tuple[Any, ...], input_names: list[str],
                     output_names: list[str], *, dynamic_axes: DynamicAxes | None = None) -> bytes:
        """The ``.pt2`` archive as bytes, never on disk (an encrypted run's export)."""
        import torch

        buffer = io.BytesIO()
        torch.export.save(self._program(module, example_inputs, input_names, output_names,
                                        dynamic_axes), buffer)
        return buffer.getvalue()

    def load_bytes(self, data: bytes, name: Any) -> Runner:
        """A runner over a ``.pt2`` archive held in memory (checked for pickles first)."""
        return self.load(name, data=data)

    def load(self, path: Any, *, data: bytes | None = None) -> Runner:
        import torch

        check_pt2_is_safe(path, data=data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.load(str(path) if data is None else io.BytesIO(data))
        except Exception as err:
            raise ExportError(f"{path}: cannot load the ExportedProgram ({_first_line(err)}); "
                              f"re-export it") from err
        return torch_runner(program.module())


def check_pt2_is_safe(path: Any, *, data: bytes | None = None) -> None:
    """Refuse a ``.pt2`` archive that would make ``torch.export.load`` unpickle objects.

    ``torch.export.load`` unpickles weights marked ``use_pickle`` (and falls back to
    full unpickling for sample inputs that are not plain tensors), which can run code.
    Privet's own exports hold raw tensor bytes and JSON only; anything else is refused.
    """
    import torch

    try:
        with zipfile.ZipFile(str(path) if data is None else io.BytesIO(data)) as zf:
            names = zf.namelist()
            if not any(n.endswith("archive_format") for n in names):
                raise ExportError(f"{path}: not a torch.export archive written by torch>=2.7 "
                                  f"(no archive_format); re-export it")
            for name in names:
                if name.endswith(("model_weights_config.json", "model_constants_config.json")):
                    config = json.loads(zf.read(name)).get("config", {})
                    pickled = [k for k, v in config.items() if v.get("use_pickle")]
                    if pickled:
                        raise ExportError(f"{path}: holds pickled tensors ({', '.join(pickled[:3])}); "
                                          f"Privet refuses to unpickle them. Export a model "
                                          f"without tensor subclasses")
                elif "/sample_inputs/" in name or name.startswith("sample_inputs/"):
                    data = zf.read(name)
                    if data:
                        torch.load(io.BytesIO(data), weights_only=True)
    except ExportError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as err:
        raise ExportError(f"{path}: corrupted or truncated .pt2 archive ({_first_line(err)}); "
                          f"re-export it") from err
    except Exception as err:  # torch.load(weights_only=True) refused an object
        raise ExportError(f"{path}: the archive's sample inputs hold objects other than "
                          f"tensors ({_first_line(err)}); Privet refuses to unpickle them") from err


class OnnxExporter(Exporter):
    """ONNX through the dynamo exporter (dynamic batch); falls back to the TorchScript one."""

    suffix = ".onnx"
    artifact_is_code = False  # a graph of standard operators, run by ONNX Runtime

    @attrs.define(frozen=True)
    class Options:
        opset: int = 18
        dynamo: bool = True

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str], *,
               dynamic_axes: DynamicAxes | None = None) -> Path:
        path = Path(out_dir) / "model.onnx"
        self._export(module, example_inputs, str(path), input_names, output_names, dynamic_axes)
        return path

    def export_bytes(self, module: Any, example_inputs: tuple[Any, ...], input_names: list[str],
                     output_names: list[str], *, dynamic_axes: DynamicAxes | None = None) -> bytes:
        """The ONNX model as bytes, never written to disk: what an encrypted run's export
        seals. A model over 2 GiB (which needs ONNX external data files) is refused."""
        data = self._export(module, example_inputs, None, input_names, output_names, dynamic_axes)
        assert data is not None
        return data

    def _export(self, module: Any, example_inputs: tuple[Any, ...], path: str | None,
                input_names: list[str], output_names: list[str],
                dynamic_axes: DynamicAxes | None) -> bytes | None:
        """Export to ``path``, or (``path`` None) to memory and return the bytes."""
        require_modules("onnx", "onnxscript", "onnxruntime")
        import torch

        axes = dynamic_axes if dynamic_axes is not None else default_axes(input_names, output_names)
        self.notes: list[str] = []
        self.details: dict[str, Any] = {"exporter": "dynamo", "opset": self.options.opset}
        self.used = "dynamo"
        if self.options.dynamo:
            try:
                # the dynamo exporter prints its progress to stdout: keep stdout for results
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    program = torch.onnx.export(
                        module, example_inputs, path, dynamo=True, input_names=input_names,
                        output_names=output_names,
                        dynamic_shapes=torch_dynamic_shapes(example_inputs, input_names, axes),
                        opset_version=self.options.opset, external_data=False, verbose=False)
                return None if path is not None else _onnx_bytes(program.model_proto)
            except ExportError:
                raise
            except Exception as err:
                note = (f"the dynamo ONNX exporter failed ({type(err).__name__}: {_first_line(err)}); "
                        f"fell back to the TorchScript-based exporter")
                warnings.warn(note, stacklevel=2)
                self.notes.append(note)
        self.used = "torchscript"
        self.details["exporter"] = "torchscript"
        target: Any = path if path is not None else io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example_inputs, target, dynamo=False,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes={n: {int(a): s for a, s in ax.items()}
                                            for n, ax in axes.items()},
                              opset_version=self.options.opset)
        return None if path is not None else target.getvalue()

    def load_bytes(self, data: bytes, name: Any) -> Runner:
        """A runner over an ONNX model held in memory (a sealed bundle's, decrypted)."""
        return onnx_runner(name, data=data)

    def load(self, path: Any) -> Runner:
        return onnx_runner(path)


def onnx_runner(path: Any, *, threads: int = 0, data: bytes | None = None) -> Runner:
    """Check an ONNX model with ``onnx.checker`` and open it in ONNX Runtime (CPU).

    With ``data`` the model comes from those bytes (``path`` only names it in errors):
    a sealed bundle's artifact is decrypted into memory and never written out in plain.
    """
    require_modules("onnx", "onnxruntime")
    import onnx
    import onnxruntime as ort

    if data is None:
        check_onnx_external_data(path)
        checked: Any = str(path)
    else:
        checked = _onnx_in_memory(path, data)
    try:
        onnx.checker.check_model(checked)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path) if data is None else data, options,
                                       providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"{path}: not a valid ONNX model ({_first_line(err)}); re-export it") from err
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, Any]) -> list[Any]:
        if set(inputs) == set(names):
            feed = dict(inputs)
        else:  # positional: the artifact's names differ from the caller's
            feed = dict(zip(names, inputs.values()))
        return session.run(None, feed)

    run.session = session  # type: ignore[attr-defined]
    return run


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _onnx_tensors(sub)


def check_onnx_external_data(path: Any) -> None:
    """Refuse an ONNX file whose external data would be read from outside its folder."""
    import onnx

    from .bundle import confined

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ExportError(f"{path}: not a valid ONNX model ({_first_line(err)}); re-export it") from err
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            confined(path.parent, location, path, f"external data of tensor {tensor.name!r}")


#: protobuf's limit: a larger ONNX model needs external data files, never held in memory
_PROTO_LIMIT = (1 << 31) - 1


def _onnx_bytes(proto: Any) -> bytes:
    """A model proto serialised in memory; one line when it is too large for that."""
    if proto.ByteSize() >= _PROTO_LIMIT:
        raise ExportError("the ONNX model is over 2 GiB, which needs ONNX external data files; "
                          "an encrypted run's export keeps artifacts in memory and cannot write "
                          "them: export with --format torch_export, or without encryption")
    return proto.SerializeToString()


def _onnx_in_memory(path: Any, data: bytes) -> Any:
    """Parse an ONNX model from bytes; a model naming external data files is refused."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:
        raise ExportError(f"{path}: not a valid ONNX model ({_first_line(err)}); re-export it") from err
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{path}: tensor {tensor.name!r} names external data, which a sealed "
                              f"bundle's model loaded from memory cannot use; refusing it")
    return model


class TorchScriptExporter(Exporter):
    """TorchScript (``torch.jit.trace`` or ``script``). Deprecated upstream; kept for users."""

    suffix = ".ts"

    @attrs.define(frozen=True)
    class Options:
        method: Literal["trace", "script"] = "trace"

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str], *,
               dynamic_axes: DynamicAxes | None = None) -> Path:
        path = Path(out_dir) / "model.ts"
        self._scripted(module, example_inputs).save(str(path))
        return path

    def _scripted(self, module: Any, example_inputs: tuple[Any, ...]) -> Any:
        import torch

        note = ("TorchScript is deprecated upstream in PyTorch; prefer torch_export or onnx. "
                "Privet keeps it working while torch ships it.")
        warnings.warn(note, DeprecationWarning, stacklevel=3)
        self.notes = [note]
        self.details = {"method": self.options.method}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.options.method == "script":
                return torch.jit.script(module)
            return torch.jit.trace(module, example_inputs, check_trace=False)

    def export_bytes(self, module: Any, example_inputs: tuple[Any, ...], input_names: list[str],
                     output_names: list[str], *, dynamic_axes: DynamicAxes | None = None) -> bytes:
        """The TorchScript archive as bytes, never on disk (an encrypted run's export)."""
        import torch

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(self._scripted(module, example_inputs), buffer)
        return buffer.getvalue()

    def load_bytes(self, data: bytes, name: Any) -> Runner:
        """A runner over a TorchScript archive held in memory."""
        return self.load(name, data=data)

    def load(self, path: Any, *, data: bytes | None = None) -> Runner:
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path) if data is None else io.BytesIO(data),
                                        map_location="cpu")
        except Exception as err:
            raise ExportError(f"{path}: cannot load the TorchScript file ({_first_line(err)}); "
                              f"re-export it") from err
        return torch_runner(module)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
