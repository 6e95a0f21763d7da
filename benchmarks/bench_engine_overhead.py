"""Training throughput of the engine against a plain PyTorch loop on the same workloads.

Two workloads, batch 64, fp32, CPU, one epoch each, no validation split:

* ``mlp``: a 3-layer MLP (64 -> 256 -> 256 -> 10) on 20,000 records of 64 float features;
* ``cnn``: a small CNN (two conv + pool blocks, one linear layer) on 8,000 1x28x28 images
  stored as raw bytes.

Loops compared, interleaved round by round so that machine drift hits all alike:

* ``plain loop``: the tutorial loop — a DataLoader over an in-memory TensorDataset, mean
  cross-entropy, backward, AdamW step, ``zero_grad``;
* ``plain loop, engine data``: the same loop fed like the engine is fed — the engine's
  prepared Arrow cache in the engine's order, through the model's ``encode_columns``
  (``collate([encode(r) ...])`` for a model without it), with the engine's malloc
  settings. Against this one, the difference is the loop's own cost;
* ``privet engine``: ``run_from_config`` with the same model component (defaults:
  metrics logged every 20 steps to TensorBoard, checkpoint at the end of the epoch; the
  model defines ``encode_columns``, so batches come straight from the cache's columns);
* ``lightning``: PyTorch Lightning's Trainer configured lean (no logger, no checkpoint,
  no progress bar, no model summary), if ``lightning`` is importable; skipped otherwise.

Each loop runs in a fresh process per round, timed on its second epoch, so the loops cannot
influence each other (importing Lightning alone slows every loop in its process by ~10%).
Steps/s is measured the same way for all: an optimizer post-step hook stamps every step,
and the rate is (steps - 1) / (last stamp - first stamp), so start-up, data preparation
and the end-of-epoch checkpoint are not counted; the median step duration is reported too,
as it is robust to a neighbour stealing the CPU for a while. The report gives medians over
``--runs`` rounds and the engine's ratio to each loop. Targets: the engine >= 0.98x the
plain loop and ahead of lean Lightning; ``--check`` exits 1 if either is missed.

    python benchmarks/bench_engine_overhead.py                       # print the table
    python benchmarks/bench_engine_overhead.py --write docs/benchmarks-engine.md
    python benchmarks/bench_engine_overhead.py --profile mlp         # where the engine's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import attrs

import privet

from _common import machine, replace_results

BATCH = 64
SEED = 0
TARGET = 0.98
SIZES = {"mlp": 20_000, "cnn": 8_000}


# -- the workloads, as Privet components (test-only, registered from this script) -------------


def make_data(workload: str, n: int, seed: int = SEED) -> tuple[Any, Any]:
    """Features (float32 for the MLP, uint8 images for the CNN) and int64 labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    if workload == "mlp":
        centers = rng.normal(0, 1, size=(10, 64))
        x = (centers[y] + rng.normal(0, 1.0, size=(n, 64))).astype(np.float32)
    else:
        x = rng.integers(0, 256, size=(n, 28 * 28), dtype=np.uint8)
        for k in range(10):  # a class-dependent bright square, so there is something to learn
            rows = np.flatnonzero(y == k)
            img = x[rows].reshape(-1, 28, 28)
            img[:, 2 * k:2 * k + 6, 4:10] = 255
            x[rows] = img.reshape(len(rows), -1)
    return x, y.astype(np.int64)


class BenchSource(privet.Source):
    """The synthetic records of one workload: ``x`` (64 floats) or ``image`` (784 bytes), ``label``."""

    @attrs.define(frozen=True)
    class Options:
        workload: Literal["mlp", "cnn"] = "mlp"
        n: int = 20_000

    def shards(self) -> list[privet.Shard]:
        return [privet.Shard(self.options.workload)]

    def files(self) -> list[str]:
        return []

    def read(self, shard: privet.Shard):
        x, y = make_data(self.options.workload, self.options.n)
        if self.options.workload == "mlp":
            for row, label in zip(x.tolist(), y.tolist()):
                yield {"x": row, "label": label}
        else:
            for row, label in zip(x, y.tolist()):
                yield {"image": row.tobytes(), "label": label}


def build_network(workload: str) -> Any:
    from torch import nn

    if workload == "mlp":
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10))
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 5 * 5, 10))


class BenchModel(privet.Model):
    """The workload's network as a model component; the loss is summed (the engine divides by the count)."""

    @attrs.define(frozen=True)
    class Options:
        workload: Literal["mlp", "cnn"] = "mlp"

    def build(self):
        return build_network(self.options.workload)

    def encode(self, record):
        import torch

        if self.options.workload == "mlp":
            return torch.tensor(record["x"], dtype=torch.float32), record["label"]
        pixels = torch.frombuffer(bytearray(record["image"]), dtype=torch.uint8)
        return pixels.view(1, 28, 28).float().div_(255), record["label"]

    def encode_columns(self, batch):
        """The same batch as ``collate([encode(r) ...])``, straight from the cached columns."""
        import numpy as np
        import torch

        labels = torch.from_numpy(batch.numpy("label"))
        if self.options.workload == "mlp":
            return torch.from_numpy(batch.numpy("x", np.float32)), labels
        pixels = torch.from_numpy(batch.numpy("image"))  # rows x 784 bytes
        return pixels.view(-1, 1, 28, 28).float().div_(255), labels

    def step(self, module, batch) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        logits = module(x)
        return privet.StepOutput(F.cross_entropy(logits, y, reduction="sum"), y.shape[0], logits, y)


class StepClock:
    """Stamps every optimizer step (wall and process CPU time); installed on every loop alike."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def install(self, optimizer: Any) -> None:
        self.wall.clear()
        self.cpu.clear()

        def stamp(*_: Any) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

        optimizer.register_step_post_hook(stamp)

    def rates(self) -> tuple[float, float, float]:
        """Steps per second of wall time, per second of this process' CPU time, and the
        median step's duration (robust to a neighbour stealing the CPU for a while, but
        blind to work done every N steps, such as logging)."""
        import statistics

        w, c = self.wall, self.cpu
        median_step = statistics.median(b - a for a, b in zip(w, w[1:]))
        return (len(w) - 1) / (w[-1] - w[0]), (len(c) - 1) / (c[-1] - c[0]), median_step


CLOCK = StepClock()


@privet.hookimpl
def register_sources(register):
    register("bench.source", BenchSource)


@privet.hookimpl
def register_models(register):
    register("bench.model", BenchModel)


@privet.hookimpl
def wrap_training(run, objects):
    CLOCK.install(objects.optimizer)


# -- the loops -----------------------------------------------------------------------------------


def pipeline(workload: str, runs_dir: Path) -> dict[str, Any]:
    return {
        "name": workload, "seed": SEED, "runs_dir": str(runs_dir),
        "data": {"source": {"name": "bench.source",
                            "options": {"workload": workload, "n": SIZES[workload]}},
                 "split": {"val": 0.0}},
        "model": {"name": "bench.model", "options": {"workload": workload}},
        "train": {"epochs": 1, "batch_size": BATCH, "device": "cpu", "progress": "none"},
    }


def make_host() -> Any:
    from privet.plugins import PluginHost

    host = PluginHost(strict=True)
    host.load_builtins()
    host.register_plugin(sys.modules[__name__], "bench")
    return host


def engine_loop(workload: str, runs_dir: Path, host: Any) -> tuple[float, float, float]:
    from privet.train.engine import run_from_config

    run_from_config(pipeline(workload, runs_dir), host=host, base_dir=runs_dir)
    return CLOCK.rates()


def _train(module: Any, batches: Any) -> tuple[float, float, float]:
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.0)
    CLOCK.install(optimizer)
    module.train()
    for x, y in batches:
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return CLOCK.rates()


def in_memory_tensors(workload: str) -> tuple[Any, Any]:
    import torch

    x, y = make_data(workload, SIZES[workload])
    xt = torch.from_numpy(x)
    if workload == "cnn":
        xt = xt.view(-1, 1, 28, 28).float().div_(255)
    return xt, torch.from_numpy(y)


def plain_loop(workload: str, data: tuple[Any, Any]) -> tuple[float, float, float]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(SEED)
    module = build_network(workload)
    loader = DataLoader(TensorDataset(*data), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    return _train(module, loader)


def plain_loop_engine_data(workload: str, cache: Path) -> tuple[float, float, float]:
    import torch
    from torch.utils.data import default_collate

    from privet.data.arrow import ArrowTable
    from privet.data.loader import encodes_columns, epoch_order
    from privet.train.malloc import tune_for_training

    tune_for_training()  # the engine's malloc settings too: the difference is the loop alone
    meta = json.loads((cache / "meta.json").read_text())
    table = ArrowTable([str(cache / f) for f in meta["example_files"]["train"]])
    model = BenchModel(BenchModel.Options(workload=workload))
    columnar = encodes_columns(model)
    order = epoch_order(len(table), SEED, 0)
    torch.manual_seed(SEED)
    module = model.build()

    def batches():  # what the engine does: columnar when the model can, else per record
        for start in range(0, len(order), BATCH):
            indices = order[start:start + BATCH]
            if columnar:
                yield model.encode_columns(table.columns(indices))
            else:
                yield default_collate([model.encode(r) for r in table.rows(indices)])

    return _train(module, batches())


def lightning_loop(workload: str, data: tuple[Any, Any]) -> tuple[float, float, float]:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_network(workload)

        def training_step(self, batch, _index):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.0)
            CLOCK.install(optimizer)
            return optimizer

    torch.manual_seed(SEED)
    model = Lit()
    loader = DataLoader(TensorDataset(*data), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, loader)
    return CLOCK.rates()


def has_lightning() -> bool:
    """Whether lightning is installed, without importing it here: importing it sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1 in os.environ, which every child would inherit; on
    a machine without a GPU that makes each optimizer step probe NVML (tens of
    microseconds a step, and erratic stalls), skewing every loop."""
    import importlib.util

    if importlib.util.find_spec("lightning") is None:
        print("lightning skipped: it is not installed; pip install lightning to include it",
              file=sys.stderr)
        return False
    return True


# -- measuring and reporting ----------------------------------------------------------------------


Rates = dict[str, dict[str, list[float]]]  # loop -> {"wall": [...], "cpu": [...], "step": [...]}


LOOPS = ("plain loop", "plain loop, engine data", "privet engine", "lightning (lean)")


def run_once(loop: str, workload: str, runs_dir: Path) -> tuple[float, float, float]:
    """One epoch of ``loop`` in this process, after a warm-up epoch (imports, allocator)."""
    def epoch() -> tuple[float, float, float]:
        if loop == "privet engine":
            return engine_loop(workload, runs_dir, host)
        if loop == "plain loop, engine data":
            return plain_loop_engine_data(workload, next((runs_dir / ".cache").iterdir()))
        if loop == "plain loop":
            return plain_loop(workload, data)
        return lightning_loop(workload, data)

    host = make_host() if loop == "privet engine" else None
    data = in_memory_tensors(workload) if loop in ("plain loop", "lightning (lean)") else None
    epoch()
    return epoch()


def run_child(loop: str, workload: str, runs_dir: Path, threads: int) -> tuple[float, float, float]:
    cmd = [sys.executable, __file__, "--child", loop, "--workload", workload, "--runs-dir", str(runs_dir),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{loop} on {workload} failed ({out.returncode}):\n{out.stderr}")
    wall, cpu, step = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu, step


def measure(runs: int, workloads: list[str], root: Path, threads: int) -> dict[str, Rates]:
    """Every (loop, round) in a fresh process, loops interleaved within each round.

    Separate processes keep the loops from influencing each other: importing Lightning
    alone makes every loop in its process ~10% slower, for instance.
    """
    loops = [name for name in LOOPS if name != "lightning (lean)" or has_lightning()]
    results: dict[str, Rates] = {}
    for workload in workloads:
        runs_dir = root / workload
        run_child("privet engine", workload, runs_dir, threads)  # prepares the cache
        rates: Rates = {name: {"wall": [], "cpu": [], "step": []} for name in loops}
        for r in range(runs):
            for name in loops:
                wall, cpu, step = run_child(name, workload, runs_dir, threads)
                rates[name]["wall"].append(wall)
                rates[name]["cpu"].append(cpu)
                rates[name]["step"].append(step)
            print(f"{workload} round {r + 1}/{runs}: " + ", ".join(
                f"{n} {v['wall'][-1]:.0f}/s (step {v['step'][-1] * 1e3:.2f} ms)" for n, v in rates.items()),
                file=sys.stderr)
        results[workload] = rates
    return results


def versions() -> str:
    import torch

    out = f"Python {platform.python_version()}, privet {privet.__version__}, torch {torch.__version__}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        out += f", lightning {version('lightning')}"
    except PackageNotFoundError:
        pass
    return out + f", {torch.get_num_threads()} torch threads"


def paired(engine: list[float], other: list[float]) -> float:
    """Median over rounds of the engine's rate divided by the other loop's rate in the
    same round: both ran back to back, so drift in the machine's load cancels out."""
    return statistics.median(e / o for e, o in zip(engine, other))


def report(results: dict[str, Rates], runs: int, threads: int) -> tuple[str, bool]:
    med = statistics.median
    ok = True
    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine(load=True)}",
        f"- Software: {versions()}",
        f"- Method: {runs} interleaved rounds, each loop in a fresh process per round timed on its "
        f"second epoch; one epoch of batch {BATCH}, fp32, CPU, {threads} torch thread(s); rates "
        f"from per-step timestamps of wall time and of the process' CPU time, medians over the "
        f"rounds; ratios are medians of the per-round ratios (each round runs the loops back to "
        f"back); median step of the best round (`benchmarks/bench_engine_overhead.py`)",
        "",
        "| Workload | Loop | Steps/s (wall) | min - max | Steps per CPU-second | Median step, best "
        "round | Engine / this loop (wall) | Engine / this loop (CPU) | Engine / this loop (median step) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, rates in results.items():
        engine = rates["privet engine"]
        for name, v in rates.items():
            mine = name == "privet engine"
            wall_ratio = "" if mine else f"{paired(engine['wall'], v['wall']):.3f}x"
            cpu_ratio = "" if mine else f"{paired(engine['cpu'], v['cpu']):.3f}x"
            step_ratio = "" if mine else f"{min(v['step']) / min(engine['step']):.3f}x"
            lines.append(f"| {workload} | {name} | {med(v['wall']):.0f} | {min(v['wall']):.0f} - "
                         f"{max(v['wall']):.0f} | {med(v['cpu']):.0f} | {min(v['step']) * 1e3:.2f} ms | "
                         f"{wall_ratio} | {cpu_ratio} | {step_ratio} |")
    lines += ["", "| Workload | Engine / plain loop (target >= "
                  f"{TARGET}x) | Engine / Lightning lean (target > 1x) | Met | Engine / plain loop on the "
                  "engine's data path (the loop's own cost; no target) |", "|---|---|---|---|---|"]
    for workload, rates in results.items():
        engine = rates["privet engine"]["cpu"]
        plain = paired(engine, rates["plain loop"]["cpu"])
        lean = rates.get("lightning (lean)")
        vs_lightning = paired(engine, lean["cpu"]) if lean else None
        met = plain >= TARGET and (vs_lightning is None or vs_lightning > 1.0)
        ok &= met
        own = paired(engine, rates["plain loop, engine data"]["cpu"])
        lightning = f"{vs_lightning:.3f}x" if vs_lightning is not None else "not measured"
        lines.append(f"| {workload} | {plain:.3f}x | {lightning} | {'yes' if met else 'NO'} | {own:.3f}x |")
    return "\n".join(lines) + "\n", ok


BEGIN = "<!-- overhead results: written by benchmarks/bench_engine_overhead.py --write -->"
END = "<!-- end of overhead results -->"


def profile(workload: str, root: Path) -> None:
    """Run the engine once under cProfile and print where the training time goes."""
    host = make_host()
    runs_dir = root / workload
    engine_loop(workload, runs_dir, host)  # prepare the cache first
    profiler = cProfile.Profile()
    profiler.enable()
    rate, _cpu, _step = engine_loop(workload, runs_dir, host)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(f"engine: {rate:.0f} steps/s under the profiler\n{out.getvalue()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--workload", choices=sorted(SIZES), action="append",
                        help="only this workload (repeatable; default: all)")
    parser.add_argument("--write", type=Path, help="update the overhead results of this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--profile", choices=sorted(SIZES), help="profile the engine on a workload")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine, a descheduled "
                             "OpenMP thread stalls every parallel op and swamps what is measured)")
    parser.add_argument("--child", choices=LOOPS, help=argparse.SUPPRESS)
    parser.add_argument("--runs-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        import logging

        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        print(json.dumps(run_once(args.child, args.workload[0], args.runs_dir)))
        return
    with tempfile.TemporaryDirectory(prefix="privet-bench-") as tmp:
        if args.profile:
            profile(args.profile, Path(tmp))
            return
        results = measure(args.runs, args.workload or sorted(SIZES), Path(tmp), args.threads)
    section, ok = report(results, args.runs, args.threads)
    print(section)
    if args.write:
        replace_results(args.write, section, BEGIN, END)
        print(f"wrote {args.write}")
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
