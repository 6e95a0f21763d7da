"""DP-SGD throughput and memory: the engine with privet-dp, the engine without DP, and a
plain Opacus loop, on the engine benchmark's workloads (bench_engine_overhead.py).

Workloads (batch 64, fp32, CPU or the first GPU, one epoch): ``mlp`` (64 -> 256 -> 256
-> 10 on 20,000 records) and ``cnn`` (two conv blocks, 8,000 28x28 images).

Loops, each in a fresh process per round, interleaved, timed on their second epoch:

* ``engine, no DP``: ``run_from_config`` as in bench_engine_overhead.py;
* ``engine, DP-SGD``: the same with ``privacy: {mechanism: dp-sgd, noise_multiplier: 1.0,
  max_grad_norm: 1.0}`` (privet-dp: Poisson sampling, Opacus' hooks and DPOptimizer);
* ``engine, DP-SGD ghost`` (``--ghost``): the same with ``grad_sample_mode: ghost``, the
  model's step returning per-example losses (``StepOutput.per_example``);
* ``plain Opacus``: the tutorial loop: ``PrivacyEngine().make_private`` over a
  DataLoader of in-memory tensors (Poisson sampling, hooks), cross-entropy, backward, step;
* ``plain Opacus, ghost`` (``--ghost``): the same with ``grad_sample_mode="ghost"``
  (Opacus' ghost clipping: per-example norms without per-example gradients).

Steps/s: an optimizer post-step hook stamps every step (on the optimizer Opacus wraps),
rate = (steps - 1) / (last - first). Peak memory: the process' peak RSS after the epoch
(CPU; it includes the interpreter and torch, the same for every loop), or the peak CUDA
memory allocated. Target: the engine with DP >= 0.95x the plain Opacus loop.

    python benchmarks/bench_dp.py --runs 3                 # print the table
    python benchmarks/bench_dp.py --runs 3 --ghost --workloads mlp cnn
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_engine_overhead as eo
import privet
from _common import machine

TARGET = 0.95
PRIVACY = {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}
LOOPS = ("engine, no DP", "engine, DP-SGD", "engine, DP-SGD ghost", "plain Opacus",
         "plain Opacus, ghost")


class GhostBenchModel(eo.BenchModel):
    """The benchmark's model with per-example losses, which ghost clipping needs."""

    def step(self, module: Any, batch: Any) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = batch
        logits = module(x)
        per = F.cross_entropy(logits, y, reduction="none")
        return privet.StepOutput(per.sum(), y.shape[0], logits, y, per_example=per)


class GhostModels:
    """Registers :class:`GhostBenchModel` as ``bench.model_ghost``."""

    @privet.hookimpl
    def register_models(self, register: Any) -> None:
        register("bench.model_ghost", GhostBenchModel)


def engine(workload: str, runs_dir: Path, private: bool, ghost: bool = False) -> tuple[float, float, float]:
    from privet.plugins import PluginHost
    from privet.train.engine import run_from_config

    host = PluginHost(strict=True)
    host.load_builtins()
    if private:
        from privet_dp import plugin

        host.register_plugin(plugin, "dp")  # first: its wrap_training runs after the clock's
    host.register_plugin(eo, "bench")
    config = eo.pipeline(workload, runs_dir)
    if private:
        config["privacy"] = PRIVACY
    if ghost:
        host.register_plugin(GhostModels(), "bench-ghost")
        config["privacy"] = {**PRIVACY, "grad_sample_mode": "ghost"}
        config["model"]["name"] = "bench.model_ghost"
    run_from_config(config, host=host, base_dir=runs_dir)
    return eo.CLOCK.rates()


def plain_opacus(workload: str, data: tuple[Any, Any], ghost: bool) -> tuple[float, float, float]:
    import torch
    import torch.nn.functional as F
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(eo.SEED)
    module = eo.build_network(workload)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.0)
    loader = DataLoader(TensorDataset(*data), batch_size=eo.BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(eo.SEED))
    engine_ = PrivacyEngine()
    made = engine_.make_private(module=module, optimizer=optimizer, data_loader=loader,
                                noise_multiplier=PRIVACY["noise_multiplier"],
                                max_grad_norm=PRIVACY["max_grad_norm"], poisson_sampling=True,
                                grad_sample_mode="ghost" if ghost else "hooks",
                                **({"criterion": torch.nn.CrossEntropyLoss()} if ghost else {}))
    module, optimizer, *rest = made
    criterion = rest[0] if ghost else None
    loader = rest[-1]
    eo.CLOCK.install(optimizer.original_optimizer)
    module.train()
    for x, y in loader:
        out = module(x)
        loss = criterion(out, y) if ghost else F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return eo.CLOCK.rates()


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(loop: str, workload: str, runs_dir: Path) -> tuple[float, float, float]:
    def epoch() -> tuple[float, float, float]:
        if loop.startswith("engine"):
            return engine(workload, runs_dir, private=loop.startswith("engine, DP-SGD"),
                          ghost=loop == "engine, DP-SGD ghost")
        return plain_opacus(workload, data, ghost=loop.endswith("ghost"))

    data = None if loop.startswith("engine") else eo.in_memory_tensors(workload)
    epoch()  # warm-up: imports, allocator, the cache
    wall, _cpu, step = epoch()
    return wall, step, peak_memory_mb()


def run_child(loop: str, workload: str, runs_dir: Path, threads: int) -> tuple[float, float, float]:
    cmd = [sys.executable, __file__, "--child", loop, "--workload", workload,
           "--runs-dir", str(runs_dir), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{loop} on {workload} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(runs: int, workloads: list[str], loops: list[str], root: Path, threads: int) -> dict:
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for workload in workloads:
        runs_dir = root / workload
        rates = {name: {"steps_s": [], "step_ms": [], "peak_mb": []} for name in loops}
        for r in range(runs):
            for name in loops:
                wall, step, peak = run_child(name, workload, runs_dir, threads)
                rates[name]["steps_s"].append(wall)
                rates[name]["step_ms"].append(step * 1e3)
                rates[name]["peak_mb"].append(peak)
            print(f"{workload} round {r + 1}/{runs}: " + ", ".join(
                f"{n} {v['steps_s'][-1]:.1f}/s" for n, v in rates.items()), file=sys.stderr)
        results[workload] = rates
    return results


def report(results: dict, runs: int) -> tuple[str, bool]:
    lines = [f"Machine: {machine(load=True)}; medians of {runs} rounds, batch {eo.BATCH} "
             f"(expected, with Poisson sampling), noise 1.0, clip 1.0.", "",
             "| workload | loop | steps/s | median step | peak memory | vs plain Opacus (same mode) |",
             "| --- | --- | --- | --- | --- | --- |"]
    ok = True
    for workload, rates in results.items():
        for name, v in rates.items():
            # ghost loops are compared with plain Opacus' ghost loop, the rest with hooks
            ref = "plain Opacus, ghost" if name.endswith("ghost") else "plain Opacus"
            rate = statistics.median(v["steps_s"])
            ratio = rate / statistics.median(rates[ref]["steps_s"])
            if name == "engine, DP-SGD":
                ok = ok and ratio >= TARGET
            lines.append(f"| {workload} | {name} | {rate:.1f} | {statistics.median(v['step_ms']):.2f} ms "
                         f"| {statistics.median(v['peak_mb']):.0f} MB | {ratio:.2f}x |")
    return "\n".join(lines) + "\n", ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--ghost", action="store_true", help="also plain Opacus with ghost clipping")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET}x plain Opacus")
    parser.add_argument("--child", choices=LOOPS)
    parser.add_argument("--workload", default="mlp")
    parser.add_argument("--runs-dir", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_once(args.child, args.workload, args.runs_dir)))
        return
    loops = [n for n in LOOPS if args.ghost or not n.endswith("ghost")]
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args.runs, args.workloads, loops, Path(tmp), args.threads)
    table, ok = report(results, args.runs)
    print(table)
    if args.check and not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
