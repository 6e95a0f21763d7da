"""Progress display: a rich bar on a terminal, plain periodic lines otherwise.

Redraws are throttled (a redraw per step costs ~0.4 ms, a quarter of a small model's
step); the loop calls :meth:`update` only every ``log_every_n_steps``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, mode: str, total_steps: int, *, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode if enabled else "none"
        self.total = total_steps
        self.started = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        if self.mode == "bar":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeRemainingColumn)

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), refresh_per_second=4, transient=False)
            self._task = self._bar.add_task("train", total=total_steps, info="")
            self._bar.start()

    def update(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        info = f"epoch {epoch + 1} " + " ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in metrics.items())
        if self.mode == "bar":
            self._bar.update(self._task, completed=step, info=info)
        elif self.mode == "log":
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(step, 1) * max(self.total - step, 0)
            self.stream.write(f"step {step}/{self.total} {info} eta {eta:.0f}s\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.mode == "bar":
            self._bar.console.print(text)
        elif self.mode == "log":
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
