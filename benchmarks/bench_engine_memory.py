"""Memory of training from the prepared cache as the data grows 10x.

For each size (``--base-mb`` and 10 times that), two fresh processes run the same
pipeline: the first prepares the Arrow cache (and trains one step), the second reuses the
cache and trains one full shuffled epoch of a linear classifier, batch 256, CPU. The
second process samples its own ``/proc/self/status`` every 10 ms; the training phase runs
from the first optimizer step to the last one (timestamps from a step hook).

Reported per size: resident memory at the first step and its peak during training, split
into private memory (``RssAnon``: what the engine allocates) and mapped file pages
(``RssFile``: pages of the memory-mapped cache that the epoch touched; the kernel's page
cache, shared and reclaimable, and bounded by the cache's size). The target: the peak of
private memory while training grows by less than 10% when the data grows 10x.

    python benchmarks/bench_engine_memory.py                   # 100 MB -> 1 GB of records
    python benchmarks/bench_engine_memory.py --base-mb 50      # 50 MB -> 500 MB, quicker
    python benchmarks/bench_engine_memory.py --write docs/benchmarks-engine.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import attrs

import privet

from _common import machine, replace_results

FEATURES = 128  # one record: 128 float64 values + a label, about 1 KiB in the cache
RECORD_BYTES = FEATURES * 8 + 8
BATCH = 256
TARGET = 0.10
FIELDS = ("VmRSS", "RssAnon", "RssFile")


class WideSource(privet.Source):
    """``n`` records of ``FEATURES`` floats and a label, generated in chunks (streaming)."""

    @attrs.define(frozen=True)
    class Options:
        n: int = 1000

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard("wide")]

    def files(self) -> list[str]:
        return []

    def read(self, shard: privet.Shard):
        import numpy as np

        rng = np.random.default_rng(0)
        done = 0
        while done < self.options.n:
            k = min(10_000, self.options.n - done)
            y = rng.integers(0, 4, size=k)
            x = rng.normal(0, 1, size=(k, FEATURES)) + y[:, None]
            for row, label in zip(x.tolist(), y.tolist()):
                yield {"x": row, "label": label}
            done += k


class Linear(privet.Model):
    """A linear classifier: cheap steps, so the data path dominates what is measured."""

    def build(self):
        from torch import nn

        return nn.Linear(FEATURES, 4)

    def encode(self, record):
        import torch

        return torch.tensor(record["x"], dtype=torch.float32), record["label"]

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        logits = module(x)
        return privet.StepOutput(F.cross_entropy(logits, y, reduction="sum"), y.shape[0], logits, y)


class Sampler:
    """Samples this process' memory in a thread; the step hook marks the training phase."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.steps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) * 1024
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.read()))
            time.sleep(0.01)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def training(self) -> dict[str, Any] | None:
        if len(self.steps) < 2:
            return None
        first, last = self.steps[0], self.steps[-1]
        at_first = min(self.samples, key=lambda s: abs(s[0] - first))[1]
        window = [m for t, m in self.samples if first <= t <= last] or [at_first]
        return {"steps": len(self.steps), "seconds": last - first, "at_first_step": at_first,
                "peak": {k: max(m[k] for m in window) for k in FIELDS}}


SAMPLER = Sampler()


@privet.hookimpl
def register_sources(register):
    register("bench.wide", WideSource)


@privet.hookimpl
def register_models(register):
    register("bench.linear", Linear)


@privet.hookimpl
def wrap_training(run, objects):
    objects.optimizer.register_step_post_hook(lambda *_: SAMPLER.steps.append(time.perf_counter()))


def pipeline(n: int, runs_dir: Path, max_steps: int) -> dict[str, Any]:
    return {
        "name": "memory", "seed": 0, "runs_dir": str(runs_dir),
        "data": {"source": {"name": "bench.wide", "options": {"n": n}}, "split": {"val": 0.001}},
        "model": "bench.linear",
        "train": {"epochs": 1, "max_steps": max_steps, "batch_size": BATCH, "device": "cpu",
                  "progress": "none", "optimizer": {"name": "sgd", "lr": 0.01}},
    }


def child(n: int, runs_dir: Path, max_steps: int) -> None:
    """One run in this process; prints a JSON summary of its memory on stdout."""
    from privet.plugins import PluginHost
    from privet.train.engine import run_from_config

    host = PluginHost(strict=True)
    host.load_builtins()
    host.register_plugin(sys.modules[__name__], "bench")
    SAMPLER.start()
    started = time.perf_counter()
    _run_dir, report = run_from_config(pipeline(n, runs_dir, max_steps), host=host, base_dir=runs_dir)
    SAMPLER.stop()
    peak = {k: max(m[k] for _t, m in SAMPLER.samples) for k in FIELDS}
    cache = Path(report["data"]["cache"])
    print(json.dumps({
        "records": n, "cache_reused": report["data"]["cache_reused"],
        "cache_bytes": sum(p.stat().st_size for p in cache.rglob("*.arrow")),
        "prepare_s": report["timings"]["prepare_s"], "total_s": time.perf_counter() - started,
        "process_peak": peak, "training": SAMPLER.training(),
    }))


def run_child(n: int, runs_dir: Path, max_steps: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(n), "--runs-dir", str(runs_dir),
           "--max-steps", str(max_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(base_mb: int, factor: int, root: Path) -> list[dict[str, Any]]:
    results = []
    for mb in (base_mb, base_mb * factor):
        n = mb * 2**20 // RECORD_BYTES
        runs_dir = root / f"{mb}mb"
        prepared = run_child(n, runs_dir, 1)  # prepares the cache (and trains one step)
        trained = run_child(n, runs_dir, 0)  # a full epoch from the reused cache
        assert trained["cache_reused"], "the training process must reuse the cache"
        trained["prepare"] = prepared
        results.append(trained)
        print(f"{mb} MB: {json.dumps(trained)}", file=sys.stderr)
    return results


def _mb(value: float) -> str:
    return f"{value / 2**20:.0f} MB"


def report(results: list[dict[str, Any]]) -> tuple[str, bool]:
    import pyarrow
    import torch

    small, big = results[0], results[-1]
    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Software: Python {platform.python_version()}, privet {privet.__version__}, "
        f"torch {torch.__version__}, pyarrow {pyarrow.__version__}",
        f"- Method: one shuffled epoch, batch {BATCH}, of a linear classifier on {FEATURES}-float "
        f"records read from the memory-mapped cache, in a fresh process that reuses a cache "
        f"prepared by another; memory sampled every 10 ms from /proc/self/status "
        f"(`benchmarks/bench_engine_memory.py`)",
        "",
        "| Records | Cache on disk | Steps | Train s | RSS at first step | Peak RSS | Peak private "
        "(RssAnon) | Peak mapped (RssFile) | Preparation: s, peak private |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["training"]
        lines.append(
            f"| {r['records']:,} | {_mb(r['cache_bytes'])} | {t['steps']} | {t['seconds']:.1f} | "
            f"{_mb(t['at_first_step']['VmRSS'])} | {_mb(t['peak']['VmRSS'])} | "
            f"{_mb(t['peak']['RssAnon'])} | {_mb(t['peak']['RssFile'])} | "
            f"{r['prepare']['prepare_s']:.0f} s, {_mb(r['prepare']['process_peak']['RssAnon'])} |")
    growth_anon = big["training"]["peak"]["RssAnon"] / small["training"]["peak"]["RssAnon"] - 1
    growth_rss = big["training"]["peak"]["VmRSS"] / small["training"]["peak"]["VmRSS"] - 1
    ok = growth_anon < TARGET
    size_ratio = big["cache_bytes"] / small["cache_bytes"]
    lines += [
        "",
        "| Data grows | Peak private memory while training grows | Target | Met | Peak RSS "
        "(incl. mapped cache pages) grows |",
        "|---|---|---|---|---|",
        f"| {size_ratio:.1f}x | {growth_anon:+.1%} | < +{TARGET:.0%} | {'yes' if ok else 'NO'} | "
        f"{growth_rss:+.1%} |",
    ]
    return "\n".join(lines) + "\n", ok


BEGIN = "<!-- memory results: written by benchmarks/bench_engine_memory.py --write -->"
END = "<!-- end of memory results -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mb", type=int, default=100, help="the smaller size (default 100 MB)")
    parser.add_argument("--factor", type=int, default=10, help="how much larger the second is")
    parser.add_argument("--write", type=Path, help="update the memory results of this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--runs-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs_dir, args.max_steps)
        return
    with tempfile.TemporaryDirectory(prefix="privet-bench-memory-") as tmp:
        results = measure(args.base_mb, args.factor, Path(tmp))
    section, ok = report(results)
    print(section)
    if args.write:
        replace_results(args.write, section, BEGIN, END)
        print(f"wrote {args.write}")
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
