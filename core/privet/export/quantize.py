"""int8 quantization: ONNX Runtime (dynamic, or static with calibration) and torchao.

ONNX: ``onnxruntime.quantization`` turns float weights into int8 (``MatMulInteger`` /
``QDQ`` nodes); ``dynamic`` computes activation scales at run time, ``static`` fixes
them from calibration batches (validation records). PyTorch: ``torch.ao.quantization`` is
deprecated upstream, so the PyTorch path uses torchao where it is installed, storing the
quantized weights as safetensors plus JSON metadata (torchao's own allow-listed format:
no pickles) that ``privet predict`` loads into a module the model plugin builds.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from ..errors import ExportError
from .exporters import Runner, _first_line, torch_runner

#: What to install for the PyTorch int8 artifact (torchao is an extra of the core).
INSTALL_INT8 = "pip install 'privet[int8]'"
#: torchao scheme used for the PyTorch int8 artifact: int8 weights, float activations.
#: torchao's dynamic-activation kernels target GPUs and run slower than fp32 on CPUs.
TORCHAO_SCHEME = "int8_weight_only"


@contextlib.contextmanager
def _quiet_logging() -> Any:
    """ONNX Runtime's quantizer and torchao's import log advice on the root logger."""
    root = logging.getLogger()
    pytree = logging.getLogger("torch.utils._pytree")
    levels = root.level, pytree.level
    root.setLevel(logging.ERROR)
    pytree.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(levels[0])
        pytree.setLevel(levels[1])


def _preprocess(src: Path, work: Path) -> tuple[Path, list[str]]:
    """Shape inference and graph cleanup before quantizing (what ORT recommends)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "pre.onnx"
    try:
        quant_pre_process(str(src), str(pre))
        return pre, []
    except Exception as err:  # quantizing the raw graph still works, a little less well
        return src, [f"ONNX pre-processing for quantization failed ({_first_line(err)}); "
                     f"quantized the graph as exported"]


def quantize_onnx(src: str | Path, dst: str | Path, *, mode: str = "dynamic",
                  calibration: Iterable[dict[str, Any]] = ()) -> list[str]:
    """Write an int8 copy of the ONNX model ``src`` to ``dst``; returns notes.

    ``mode`` is ``dynamic`` (weights int8, activation scales computed per batch) or
    ``static`` (activation scales calibrated on ``calibration``: dicts of named numpy
    inputs, e.g. validation batches; QDQ format, which ONNX Runtime fuses on CPU).
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="privet-quant-") as tmp, _quiet_logging():
        model_in, notes = _preprocess(src, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        try:
            if mode == "dynamic":
                quantize_dynamic(str(model_in), str(out), weight_type=QuantType.QInt8)
            elif mode == "static":
                batches = list(calibration)
                if not batches:
                    raise ExportError("static int8 quantization needs calibration records, and the "
                                      "run has no validation or training examples; use --quantize int8")

                class Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self._it = iter(batches)

                    def get_next(self) -> dict[str, Any] | None:
                        return next(self._it, None)

                quantize_static(str(model_in), str(out), Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
                notes.append(f"static int8: activation scales calibrated on {len(batches)} "
                             f"validation batches")
            else:
                raise ExportError(f"unknown quantization mode {mode!r} (use int8 or int8-static)")
        except ExportError:
            raise
        except Exception as err:
            raise ExportError(f"{src}: ONNX Runtime could not quantize the model "
                              f"({_first_line(err)}); export without --quantize") from err
        shutil.copyfile(out, dst)
    return notes


def torchao_available() -> bool:
    """Whether torchao imports here (it is optional: ``pip install 'privet[int8]'``)."""
    try:
        with _quiet_logging():
            import torchao.quantization  # noqa: F401
            from torchao.prototype.safetensors import safetensors_support  # noqa: F401
    except Exception:
        return False
    return True


def _torchao_config() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def quantize_torchao(module: Any, dst: str | Path) -> Any:
    """Quantize a copy of ``module``'s Linear layers with torchao; save it to ``dst``.

    The file is safetensors: tensors plus torchao's JSON description of each quantized
    tensor, which only allow-listed torchao classes can be rebuilt from. Returns the
    quantized module (for verification).
    """
    import copy

    from safetensors.torch import save_file

    with _quiet_logging():
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
        from torchao.quantization import quantize_

    quantized = copy.deepcopy(module).eval()
    try:
        quantize_(quantized, _torchao_config())
        data, metadata = flatten_tensor_state_dict(quantized.state_dict())
        data = {k: v.contiguous() for k, v in data.items()}
        save_file(data, str(dst), metadata={**metadata, "privet_scheme": TORCHAO_SCHEME})
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"torchao could not quantize the model ({_first_line(err)}); export "
                          f"without --quantize or uninstall torchao to skip this step") from err
    return quantized


def load_torchao(module: Any, path: str | Path) -> Runner:
    """Load a torchao int8 safetensors file into ``module`` (built by the model plugin)."""
    if not torchao_available():
        raise ExportError(f"{path}: this artifact needs torchao; {INSTALL_INT8}, or predict "
                          f"with another artifact (--artifact onnx)")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with _quiet_logging():
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    try:
        with safe_open(str(path), "pt") as fh:
            metadata = dict(fh.metadata() or {})
        metadata.pop("privet_scheme", None)
        tensors = load_file(str(path))
        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
        state.update(leftover)
        module = module.eval()
        module.load_state_dict(state, assign=True, strict=True)  # assign: keep int8 tensors
    except Exception as err:
        raise ExportError(f"{path}: cannot load the torchao int8 weights ({_first_line(err)}); "
                          f"re-export it") from err
    return torch_runner(module)
