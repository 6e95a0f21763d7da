"""TensorBoard event files through tensorboard's own SummaryWriter (rank 0 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Scalars:
    """Writes scalars and hyperparameters; a no-op object on non-zero ranks."""

    def __init__(self, folder: Path | None, purge_step: int | None = None) -> None:
        self._writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

            self._writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        if self._writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        self._writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()},
                                 run_name="hparams")

    def text(self, tag: str, value: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
