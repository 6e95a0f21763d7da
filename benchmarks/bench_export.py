"""Inference speed on CPU: eager PyTorch against the exported artifacts Privet writes.

Three classifiers, fp32 weights initialised with a fixed seed (speed does not depend on
training):

* ``mlp``: a Linear-heavy MLP (256 -> 1024 -> 1024 -> 1024 -> 10), what tabular and
  embedding classifiers look like;
* ``cnn``: a small CNN (3 conv + pool blocks, one linear layer) on 3x64x64 images;
* ``transformer``: a 2-layer Transformer encoder (d=256, 4 heads) over 64 tokens, mean
  pooled, as a text classifier.

Backends, each built with Privet's own export code (``privet.export``):

* ``eager``: the ``nn.Module`` under ``torch.inference_mode``;
* ``ort fp32``: the dynamo ONNX export in ONNX Runtime (CPU execution provider);
* ``ort int8``: that model quantized with ``--quantize int8`` (dynamic: int8 weights,
  activation scales per batch);
* ``ort int8 static``: ``--quantize int8-static`` (QDQ, calibrated on 8 random batches);
* ``torchao int8``: torchao int8 weight-only (``torch_int8`` artifact), if installed.

Latency is the median time of one batch-1 call; throughput is 64 / the median time of
one batch-64 call. Backends are measured interleaved, round by round, so that load from
other processes hits all alike; the table gives the median over ``--runs`` rounds and the
speed-up of each backend over eager. Torch and ONNX Runtime use the same thread count.

    python benchmarks/bench_export.py                        # print the tables
    python benchmarks/bench_export.py --threads 1 2 --write docs/benchmarks-export.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from _common import cpu_name

BATCH = 64
TARGET = 1.5
SEED = 0


def build(workload: str) -> tuple[Any, Callable[[int], Any], str]:
    """(module in eval mode, input maker for a batch size, input name)."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    if workload == "mlp":
        module = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                               nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        return module.eval(), lambda n: torch.randn(n, 256), "features"
    if workload == "cnn":
        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        module = nn.Sequential(block(3, 32), block(32, 64), block(64, 128),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
        return module.eval(), lambda n: torch.randn(n, 3, 64, 64), "image"
    if workload == "transformer":
        class TextClassifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(8000, 256)
                layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.head = nn.Linear(256, 4)

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

        gen = torch.Generator().manual_seed(SEED)
        return (TextClassifier().eval(),
                lambda n: torch.randint(0, 8000, (n, 64), generator=gen), "tokens")
    raise SystemExit(f"unknown workload {workload!r}")


def backends(workload: str, folder: Path, threads: int) -> tuple[dict[str, Callable], dict[str, int]]:
    """Callables taking a numpy batch, keyed by backend name, and the artifact sizes."""
    import numpy as np
    import torch

    from privet.export.exporters import OnnxExporter, onnx_runner
    from privet.export.quantize import quantize_onnx, quantize_torchao, torchao_available

    module, make, name = build(workload)
    example = (make(4),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = OnnxExporter(OnnxExporter.Options()).export(module, example, folder, [name],
                                                                ["logits"])
    int8 = folder / "model.int8.onnx"
    quantize_onnx(onnx_path, int8, mode="dynamic")
    static = folder / "model.int8s.onnx"
    quantize_onnx(onnx_path, static, mode="static",
                  calibration=[{name: make(16).numpy()} for _ in range(8)])
    sizes = {"ort fp32": onnx_path.stat().st_size, "ort int8": int8.stat().st_size,
             "ort int8 static": static.stat().st_size}

    def eager(x: Any) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    out: dict[str, Callable] = {"eager": eager}
    for key, path in (("ort fp32", onnx_path), ("ort int8", int8), ("ort int8 static", static)):
        run = onnx_runner(path, threads=threads)
        out[key] = lambda x, run=run: run({name: x})[0]
    if torchao_available():
        quantized = quantize_torchao(module, folder / "model.int8.safetensors")
        sizes["torchao int8"] = (folder / "model.int8.safetensors").stat().st_size

        def ao(x: Any) -> Any:
            with torch.inference_mode():
                return quantized(torch.from_numpy(x)).numpy()

        out["torchao int8"] = ao
    x = make(8).numpy()
    ref = eager(x)
    for key, fn in out.items():  # every backend computes the same function
        diff = float(np.abs(fn(x) - ref).max())
        limit = 1e-3 if key in ("eager", "ort fp32") else 0.25 * float(np.abs(ref).max()) + 0.05
        if diff > limit:
            raise SystemExit(f"{workload}/{key}: output differs from eager by {diff}")
    return out, sizes


def timed(fn: Callable, x: Any, calls: int) -> float:
    """Median seconds of one call, after two warm-up calls."""
    fn(x)
    fn(x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(workload: str, threads: int, runs: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    _, make, _ = build(workload)
    one, full = make(1).numpy(), make(BATCH).numpy()
    with tempfile.TemporaryDirectory(prefix="privet-bench-") as tmp:
        fns, sizes = backends(workload, Path(tmp), threads)
        lat: dict[str, list[float]] = {k: [] for k in fns}
        thr: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(runs):
            for key, fn in fns.items():
                lat[key].append(timed(fn, one, 60) * 1e3)
                thr[key].append(BATCH / timed(fn, full, 15))
    return {"latency_ms": {k: statistics.median(v) for k, v in lat.items()},
            "throughput": {k: statistics.median(v) for k, v in thr.items()},
            "sizes": sizes}


def table(results: dict[str, dict[str, Any]], threads: int) -> str:
    lines = [f"### {threads} thread{'s' if threads > 1 else ''}", "",
             "| model | backend | latency, batch 1 (ms) | throughput, batch 64 (samples/s) "
             "| x eager throughput | artifact size |",
             "|---|---|---:|---:|---:|---:|"]
    for workload, r in results.items():
        base = r["throughput"]["eager"]
        for key in r["throughput"]:
            size = r["sizes"].get(key)
            lines.append(f"| {workload} | {key} | {r['latency_ms'][key]:.3f} | "
                         f"{r['throughput'][key]:,.0f} | {r['throughput'][key] / base:.2f}x | "
                         f"{f'{size / 1e6:.2f} MB' if size else '-'} |")
    return "\n".join(lines)


def machine() -> str:
    import onnxruntime
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
            f"{torch.__version__}, onnxruntime {onnxruntime.__version__}; load average "
            f"{load:.1f} when the run ended")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["mlp", "cnn", "transformer"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="write the tables to this file")
    args = parser.parse_args()
    sections = []
    verdicts = []
    for threads in args.threads:
        results = {}
        for w in args.workloads:
            print(f"measuring {w} with {threads} thread(s) ...", file=sys.stderr)
            results[w] = measure(w, threads, args.runs)
            r = results[w]["throughput"]
            verdicts.append(f"{w}, {threads} thread(s): ort int8 {r['ort int8'] / r['eager']:.2f}x "
                            f"eager throughput (target >= {TARGET}x)")
        sections.append(table(results, threads))
    text = "\n\n".join(sections)
    print(text)
    print("\n".join(verdicts))
    if args.write:
        stamp = datetime.date.today().isoformat()
        header = args.write.read_text(encoding="utf-8").split("<!-- results -->")[0] \
            if args.write.exists() else ""
        body = (f"<!-- results -->\nMeasured {stamp} on {machine()}.\n"
                f"Command: `python benchmarks/bench_export.py --threads "
                f"{' '.join(map(str, args.threads))} --runs {args.runs} --write {args.write}`\n\n"
                f"{text}\n")
        args.write.write_text(header + body, encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
