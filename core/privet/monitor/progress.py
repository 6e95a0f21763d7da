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


class PrepProgress:
    """Records/s and MB/s while the data is prepared (``train.progress``: bar, log or none).

    Updated per chunk of records; drawn at most four times a second (bar) or every
    ``log_every_s`` seconds (log), so its cost stays out of the preparation's.
    """

    def __init__(self, mode: str, *, total_bytes: int = 0, stream: TextIO | None = None,
                 log_every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.total_bytes = total_bytes
        self.log_every_s = log_every_s
        self._bar: Any = None
        self._task: Any = None
        self.phase("prepare")

    def phase(self, name: str) -> None:
        """Start counting a new pass over the data (a fitting pass, then the writing pass)."""
        if self.mode == "log" and getattr(self, "records", 0):  # the finished pass' summary
            self.stream.write(f"data {self.name}: {self.line()}\n")
            self.stream.flush()
        self.name = name
        self.records = 0
        self.bytes = 0
        self.started = time.perf_counter()
        self._last = self.started
        if self.mode == "bar":
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        if self._bar is None:
            self._bar = RichProgress(TextColumn("[bold]data {task.description}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     refresh_per_second=4, transient=False, console=None)
            self._bar.start()
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(self.name, total=self.total_bytes or None, info="")

    def rates(self) -> tuple[float, float]:
        """(records/s, MB/s) of the current pass so far."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return self.records / elapsed, self.bytes / elapsed / 1e6

    def line(self) -> str:
        rps, mbps = self.rates()
        return f"{self.records} records, {self.bytes / 1e6:.1f} MB, {rps:,.0f} records/s, {mbps:.1f} MB/s"

    def advance(self, records: int, nbytes: int) -> None:
        """``records`` more read (a chunk), ``nbytes`` more of the source done (a shard)."""
        self.records += records
        self.bytes += nbytes
        if self.mode == "none":
            return
        now = time.perf_counter()
        if self.mode == "bar":
            if now - self._last >= 0.25 or nbytes:
                self._last = now
                self._bar.update(self._task, completed=self.bytes, info=self.line())
        elif now - self._last >= self.log_every_s:
            self._last = now
            self.stream.write(f"data {self.name}: {self.line()}\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.bytes, info=self.line())
            self._bar.stop()
            self._bar = None
        elif self.mode == "log" and self.records:
            self.stream.write(f"data {self.name}: {self.line()}\n")
            self.stream.flush()
