"""Training throughput with 1 and 2 worker processes: DDP through ``privet run --nproc-per-node``.

Each measurement is a real ``privet run`` (a fresh process, or torchrun workers for more than
one process) on synthetic classification data, one epoch, no validation split:

* ``mlp``: 64 -> 256 -> 256 -> 10 (75k parameters): little compute per step, a small
  all-reduce; the engine's per-step costs (data, encode, collate, Python) dominate;
* ``wide``: 512 -> 2048 -> 2048 -> 10 (5.3M parameters, 21 MB of gradients to all-reduce
  per step): compute- and communication-bound.

``batch_size`` is per device, as in a pipeline file, so two processes take a global batch
twice as large and half as many steps over the same data (weak scaling, the usual way to
use DDP). Samples/s is measured inside the workers: an optimizer-step hook on rank 0 stamps
the time after ``--warmup`` steps and after the last step (synchronising CUDA at both), so
start-up, data preparation and the end-of-epoch checkpoint are not counted. The result is
the median over ``--runs`` rounds, configurations interleaved within each round.

On CPU each configuration shares the machine's cores: 1 process x all cores, N processes x
(cores / N) threads, and 1 process x 1 thread as the per-core reference. With CUDA each
process drives one GPU (NCCL); ``--procs`` must not exceed the GPUs visible.

    python benchmarks/bench_distributed.py                                   # CPU, print the table
    python benchmarks/bench_distributed.py --write docs/benchmarks-distributed.md
    python benchmarks/bench_distributed.py --device cuda --precision bf16 --procs 1,2,4,8 \\
        --records 400000 --batch-size 256 --write docs/benchmarks-distributed.md

The script is also the plugin that provides the workload: it copies itself into the
benchmark's temporary folder and names that folder in the pipeline's ``plugins.paths``, so
every torchrun worker loads the same components and the step clock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

import privet

from _common import machine, replace_results

WORKLOADS = {  # name -> (features, hidden, default records)
    "mlp": (64, 256, 16_384),
    "wide": (512, 2048, 8_192),
}
CLASSES = 10
SEED = 0
CLOCK_DIR = "BENCH_CLOCK_DIR"
PLUGIN_NAME = "bench_distributed_workload"


# -- the workload, as Privet components (registered when this file is loaded as a plugin) -----


class BenchSource(privet.Source):
    """Gaussian clusters: ``x`` (``features`` floats) and an integer ``label``."""

    @attrs.define(frozen=True)
    class Options:
        features: int = 64
        n: int = 32_768

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard(f"clusters-{self.options.features}")]

    def files(self) -> list[str]:
        return []

    def read(self, shard: privet.Shard):
        import numpy as np

        rng = np.random.default_rng(SEED)
        centers = rng.normal(0, 1, size=(CLASSES, self.options.features))
        labels = rng.integers(0, CLASSES, size=self.options.n)
        x = (centers[labels] + rng.normal(0, 1.0, size=(self.options.n, self.options.features))).astype("float32")
        for row, label in zip(x.tolist(), labels.tolist()):
            yield {"x": row, "label": label}


class BenchModel(privet.Model):
    """A 3-layer MLP; the loss is summed (the engine divides by the count over the world)."""

    @attrs.define(frozen=True)
    class Options:
        features: int = 64
        hidden: int = 256

    def build(self):
        from torch import nn

        f, h = self.options.features, self.options.hidden
        return nn.Sequential(nn.Linear(f, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, CLASSES))

    def encode(self, record):
        import torch

        return torch.tensor(record["x"], dtype=torch.float32), record["label"]

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        logits = module(x)
        return privet.StepOutput(F.cross_entropy(logits, y, reduction="sum"), y.shape[0], logits, y)


class StepClock:
    """Times the steps after the warm-up on one rank (CUDA synchronised at both stamps)."""

    def __init__(self, total: int, warmup: int, cuda: bool) -> None:
        self.total, self.warmup, self.cuda = total, warmup, cuda
        self.steps = 0
        self.start: float | None = None
        self.end: float | None = None

    def stamp(self, *_: Any) -> None:
        self.steps += 1
        if self.steps not in (self.warmup, self.total):
            return
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        if self.steps == self.warmup:
            self.start = time.perf_counter()
        if self.steps == self.total:
            self.end = time.perf_counter()


CLOCKS: dict[int, StepClock] = {}


@privet.hookimpl
def register_sources(register):
    register("bench.clusters", BenchSource)


@privet.hookimpl
def register_models(register):
    register("bench.mlp", BenchModel)


@privet.hookimpl
def wrap_training(run, objects):
    if not os.environ.get(CLOCK_DIR):
        return
    warmup = int(os.environ.get("BENCH_WARMUP", "10"))
    clock = StepClock(len(objects.train_loader), warmup, run.device.type == "cuda")
    objects.optimizer.register_step_post_hook(clock.stamp)
    CLOCKS[run.rank] = clock


@privet.hookimpl
def after_run(run, report):
    folder = os.environ.get(CLOCK_DIR)
    clock = CLOCKS.pop(run.rank, None)
    if not folder or clock is None:
        return
    cfg = run.config.train
    Path(folder, f"rank{run.rank}.json").write_text(json.dumps({
        "steps": clock.steps, "warmup": clock.warmup, "start": clock.start, "end": clock.end,
        "global_batch": cfg.batch_size * cfg.accumulate * run.world_size, "world_size": run.world_size,
        "device": str(run.device)}))


# -- launching and measuring ---------------------------------------------------------------------


@attrs.define(frozen=True)
class Setup:
    """One configuration: processes x CPU threads per process."""

    procs: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.procs} proc x {self.threads} thread{'s' if self.threads > 1 else ''}"


def pipeline(workload: str, args: argparse.Namespace, root: Path, plugin_dir: Path) -> Path:
    features, hidden, default_n = WORKLOADS[workload]
    config = {
        "name": workload, "seed": SEED, "runs_dir": str(root / "runs"),
        "plugins": {"paths": [str(plugin_dir)]},
        "data": {"source": {"name": "bench.clusters",
                            "options": {"features": features, "n": args.records or default_n}},
                 "split": {"val": 0.0}, "num_workers": args.num_workers},
        "model": {"name": "bench.mlp", "options": {"features": features, "hidden": hidden}},
        "train": {"epochs": 1, "batch_size": args.batch_size, "device": args.device,
                  "precision": args.precision, "progress": "none"},
    }
    import yaml

    path = root / f"{workload}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_once(pipeline_file: Path, setup: Setup, name: str, warmup: int, root: Path) -> dict[str, Any]:
    """One ``privet run``; returns rank 0's clock with the samples/s it implies."""
    clock_dir = root / "clock" / name
    clock_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVET_", "TORCHELASTIC_"))}
    env.update({"PRIVET_LOAD_PLUGINS": "", "OMP_NUM_THREADS": str(setup.threads), CLOCK_DIR: str(clock_dir),
                "BENCH_WARMUP": str(warmup), "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "privet", "run", str(pipeline_file), "--name", name]
    if setup.procs > 1:
        cmd += ["--nproc-per-node", str(setup.procs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    clock = json.loads((clock_dir / "rank0.json").read_text())
    timed = clock["steps"] - clock["warmup"]
    if timed < 10 or clock["start"] is None or clock["end"] is None:
        raise SystemExit(f"{name}: only {clock['steps']} steps; raise --records or lower --warmup")
    clock["samples_per_s"] = timed * clock["global_batch"] / (clock["end"] - clock["start"])
    return clock


def setups(args: argparse.Namespace) -> list[Setup]:
    cores = os.cpu_count() or 1
    procs = [int(p) for p in args.procs.split(",")]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available() or max(procs) > torch.cuda.device_count():
            raise SystemExit(f"--device cuda with --procs {args.procs} needs {max(procs)} visible GPU(s); "
                             f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} found")
        return [Setup(p, max(1, cores // p)) for p in procs]
    out = [Setup(p, max(1, cores // p)) for p in procs]
    if Setup(1, 1) not in out:
        out.append(Setup(1, 1))
    return out


def measure(args: argparse.Namespace, root: Path) -> dict[str, dict[Setup, list[float]]]:
    plugin_dir = root / "plugin"
    plugin_dir.mkdir()
    shutil.copy(__file__, plugin_dir / f"{PLUGIN_NAME}.py")
    configs = setups(args)
    results: dict[str, dict[Setup, list[float]]] = {}
    for workload in args.workloads.split(","):
        path = pipeline(workload, args, root, plugin_dir)
        run_once(path, Setup(1, configs[0].threads), f"{workload}-prepare", args.warmup, root)  # cache + warm-up
        rates: dict[Setup, list[float]] = {s: [] for s in configs}
        for r in range(args.runs):
            for setup in configs:
                clock = run_once(path, setup, f"{workload}-{setup.procs}x{setup.threads}-{r}", args.warmup, root)
                rates[setup].append(clock["samples_per_s"])
            print(f"{workload} round {r + 1}/{args.runs}: " + ", ".join(
                f"{s.label} {v[-1]:.0f}/s" for s, v in rates.items()), file=sys.stderr)
        results[workload] = rates
    return results


# -- reporting -----------------------------------------------------------------------------------


def gpus() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x {names[0]}"


def report(results: dict[str, dict[Setup, list[float]]], args: argparse.Namespace,
           load: tuple[float, float]) -> str:
    import torch

    med = statistics.median
    configs = list(next(iter(results.values())))
    # CPU: one core is the unit the processes share; CUDA: one process (one GPU)
    baseline = Setup(1, 1) if args.device == "cpu" else next((s for s in configs if s.procs == 1), configs[0])
    backend = "NCCL" if args.device == "cuda" else "gloo"
    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}; GPUs: {gpus()}",
        f"- Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}",
        f"- Software: Python {platform.python_version()}, privet {privet.__version__}, torch {torch.__version__}",
        (f"- Method: `benchmarks/bench_distributed.py --device {args.device} --precision {args.precision} "
         f"--procs {args.procs} --batch-size {args.batch_size} --runs {args.runs}`: one epoch per run, "
         f"batch {args.batch_size} per process, DDP over {backend}, samples/s on rank 0 after "
         f"{args.warmup} warm-up steps, median of {args.runs} interleaved rounds"),
        "",
        f"| Workload | Configuration | Global batch | Samples/s (median) | min - max | vs {baseline.label} |",
        "|---|---|---|---|---|---|",
    ]
    for workload, rates in results.items():
        base = med(rates[baseline])
        for setup, values in rates.items():
            lines.append(f"| {workload} | {setup.label} | {args.batch_size * setup.procs} | {med(values):,.0f} | "
                         f"{min(values):,.0f} - {max(values):,.0f} | {med(values) / base:.2f}x |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- results: written by benchmarks/bench_distributed.py --write -->"
END = "<!-- end of results -->"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--procs", default="1,2", help="process counts to compare, e.g. 1,2,4,8")
    parser.add_argument("--workloads", default="mlp,wide")
    parser.add_argument("--records", type=int, default=0, help="records per workload (0: its default)")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--warmup", type=int, default=10, help="steps not timed at the start of each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="put the results into this markdown file")
    args = parser.parse_args(argv)
    if not set(args.workloads.split(",")) <= set(WORKLOADS):
        parser.error(f"--workloads: choose from {', '.join(WORKLOADS)}")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="privet-bench-dist-") as tmp:
        results = measure(args, Path(tmp))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    section = report(results, args, (load_before, load_after))
    print(section)
    if args.write:
        replace_results(args.write, section, BEGIN, END)


if __name__ == "__main__":
    main()
