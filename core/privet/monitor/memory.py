"""Memory per epoch (host RSS on every device, CUDA peaks on GPUs) and out-of-memory errors.

Read once per epoch, never per step: ``/proc/self/statm`` is a few µs to read and
the CUDA peaks are counters the caching allocator keeps anyway. The CUDA peaks are reset at
the start of each epoch, so each epoch's number is that epoch's high-water mark (the first
one includes model and optimizer set-up). A CUDA out-of-memory error becomes an
:class:`OutOfMemoryError` that names the options which lower memory, instead of a traceback.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from ..errors import TrainingError

MIB = 1 << 20


class OutOfMemoryError(TrainingError):
    """The device ran out of memory; the message names the options that use less."""


def host_rss_bytes() -> int:
    """This process's resident set size now: ``/proc/self/statm`` on Linux, psutil elsewhere
    when it is installed, else the peak (``getrusage``) as the best number there is."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import psutil  # optional: not a dependency of the core

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return host_peak_rss_bytes()


def host_peak_rss_bytes() -> int:
    """The process's peak resident set size since it started (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


class MemoryMonitor:
    """Per-epoch memory of one process on ``device``: call :meth:`start_epoch` before an
    epoch and :meth:`end_epoch` after it; the latter returns TensorBoard scalars in MiB."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def start_epoch(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def end_epoch(self) -> dict[str, float]:
        rss = host_rss_bytes()
        # the kernel updates its high-water mark lazily: never report a peak below now
        peak = max(rss, host_peak_rss_bytes())
        out = {"memory/host_rss_mib": round(rss / MIB, 1),
               "memory/host_peak_rss_mib": round(peak / MIB, 1)}
        if self.cuda:
            import torch

            out["memory/cuda_peak_allocated_mib"] = round(
                torch.cuda.max_memory_allocated(self.device) / MIB, 1)
            out["memory/cuda_peak_reserved_mib"] = round(
                torch.cuda.max_memory_reserved(self.device) / MIB, 1)
        return out


def memory_section(per_epoch: list[dict[str, float]], device: Any) -> dict[str, Any]:
    """The ``memory`` section of report.json: each epoch's numbers and the run's peaks."""
    peaks: dict[str, float] = {}
    for epoch in per_epoch:
        for key, value in epoch.items():
            if key != "epoch":
                name = key.split("/", 1)[-1]
                peaks[name] = max(peaks.get(name, 0.0), value)
    return {"device": str(device), "unit": "MiB", "peak": peaks,
            "per_epoch": [{k.split("/", 1)[-1]: v for k, v in e.items()} for e in per_epoch]}


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA, and the same class on other backends)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(err, oom)


def out_of_memory_error(err: BaseException, *, device: Any, train: Any, model_options: Any,
                        where: str) -> OutOfMemoryError:
    """One line: where it ran out, how much was in use, and every option that lowers memory."""
    used = ""
    if getattr(device, "type", None) == "cuda":
        try:
            import torch

            total = torch.cuda.get_device_properties(device).total_memory
            used = (f" ({torch.cuda.max_memory_allocated(device) / MIB:.0f} MiB allocated at peak "
                    f"of {total / MIB:.0f} MiB)")
        except Exception:  # noqa: BLE001 - the device may be unusable after the error
            used = ""
    hints = [f"lower train.batch_size (now {train.batch_size}) and raise train.accumulate "
             f"(now {train.accumulate}) to keep the same global batch"]
    if train.precision == "fp32":
        hints.append("set train.precision to bf16 or fp16 (now fp32)")
    if model_options is not None and hasattr(model_options, "gradient_checkpointing"):
        if not getattr(model_options, "gradient_checkpointing"):
            hints.append("set model.options.gradient_checkpointing: true")
    else:
        hints.append("use gradient checkpointing if the model offers it, or a smaller model")
    return OutOfMemoryError(f"out of memory on {device} {where}{used}: " + "; ".join(hints))


__all__ = ["MemoryMonitor", "OutOfMemoryError", "host_peak_rss_bytes", "host_rss_bytes",
           "is_out_of_memory", "memory_section", "out_of_memory_error"]
