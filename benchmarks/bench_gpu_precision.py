"""Mixed precision on CUDA: fp32 against bf16 autocast and fp16 autocast with a GradScaler.

The recipe is the training loop's own (``core/privet/train/loop.py``): ``torch.autocast``
with the precision's dtype around forward and loss, and for fp16 a ``GradScaler`` that
scales the loss, unscales before the step and skips steps with inf/NaN gradients. Two
models of the plugins, with random data of their shapes already on the device (the loader
is not what is measured):

* the text plugin's GPT (``privet_text.networks.GPT``): 6 layers, hidden 512, 8 heads,
  context 512, vocabulary 16384; reported in tokens/s and sequences/s;
* the image plugin's ResNet-50 (``privet_image.networks.resnet``), 224x224 RGB, 1000 classes;
  reported in images/s.

For each model and precision: warm-up steps, then timed steps (``torch.cuda.synchronize``
around them), samples/s, the peak allocated and reserved memory of the timed part
(``torch.cuda.max_memory_allocated/reserved`` after a reset), the last loss (finite, or the
run is reported as failed) and, for fp16, how many steps the scaler skipped.

    python benchmarks/bench_gpu_precision.py                 # prints a Markdown table and JSON
    python benchmarks/bench_gpu_precision.py --steps 50 --json results.json
    python benchmarks/bench_gpu_precision.py --write docs/benchmarks.md

Without a CUDA device it stops at once with a message saying so (exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from _common import machine, replace_results

BEGIN = "<!-- bench_gpu_precision: begin -->"
END = "<!-- bench_gpu_precision: end -->"
PRECISIONS = ("fp32", "bf16", "fp16")


def gpt_workload(batch: int, device: Any) -> tuple[Any, Callable[[Any], Any], int, int]:
    """The GPT, a step function returning the loss, samples per step, tokens per sample."""
    import torch
    import torch.nn.functional as F
    from privet_text.networks import GPT

    vocab, context = 16384, 512
    model = GPT(vocab, context_length=context, layers=6, hidden=512, heads=8).to(device)
    ids = torch.randint(0, vocab, (batch, context + 1), device=device)

    def step(module: Any) -> Any:
        logits = module(ids[:, :-1])
        return F.cross_entropy(logits.float().view(-1, vocab), ids[:, 1:].reshape(-1))

    return model, step, batch, context


def resnet_workload(batch: int, device: Any) -> tuple[Any, Callable[[Any], Any], int, int]:
    import torch
    import torch.nn.functional as F
    from privet_image.networks import resnet

    model = resnet(50, 1000).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step(module: Any) -> Any:
        return F.cross_entropy(module(x).float(), y)

    return model, step, batch, 1


WORKLOADS = {"text.gpt": (gpt_workload, 16), "image.resnet50": (resnet_workload, 128)}


def measure(name: str, precision: str, *, steps: int, warmup: int, batch: int | None) -> dict[str, Any]:
    """One model at one precision, with the training loop's autocast and GradScaler."""
    import torch

    device = torch.device("cuda")
    build, default_batch = WORKLOADS[name]
    torch.manual_seed(0)
    model, step, samples, tokens = build(batch or default_batch, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    skipped = 0

    def one_step() -> Any:
        nonlocal skipped
        autocast = (torch.autocast("cuda", dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss = step(model)
        scaler.scale(loss).backward()
        before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        if before is not None and scaler.get_scale() < before:
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup):
        one_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    skipped = 0
    started = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    last = float(loss)
    result = {
        "model": name, "precision": precision, "batch": samples, "steps": steps,
        "samples_per_s": round(samples * steps / elapsed, 1),
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        "last_loss": round(last, 4), "finite": math.isfinite(last), "skipped_steps": skipped,
    }
    if tokens > 1:
        result["tokens_per_s"] = round(samples * tokens * steps / elapsed, 1)
    del model, optimizer, step
    torch.cuda.empty_cache()
    return result


def table(results: list[dict[str, Any]], device_name: str) -> str:
    lines = [f"Device: {device_name}; host: {machine()}.", "",
             "| model | precision | batch | samples/s | tokens/s | speed-up vs fp32 | peak allocated MiB | peak reserved MiB | loss finite | fp16 skipped steps |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    base = {r["model"]: r["samples_per_s"] for r in results if r["precision"] == "fp32"}
    for r in results:
        speedup = r["samples_per_s"] / base[r["model"]] if base.get(r["model"]) else float("nan")
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['samples_per_s']:.1f} | "
                     f"{r.get('tokens_per_s', '-')} | {speedup:.2f}x | {r['peak_allocated_mib']:.0f} | "
                     f"{r['peak_reserved_mib']:.0f} | {'yes' if r['finite'] else 'NO'} | "
                     f"{r['skipped_steps'] if r['precision'] == 'fp16' else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="override every model's batch size")
    parser.add_argument("--models", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--write", type=Path, help=f"put the table between {BEGIN} and {END} in this file")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_precision: no CUDA device (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); run it on a "
              "machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would blur the baseline
    torch.backends.cudnn.allow_tf32 = False
    device_name = torch.cuda.get_device_name()
    results = []
    for name in args.models:
        for precision in args.precisions:
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                print(f"{name} bf16: skipped, this GPU has no bf16", file=sys.stderr)
                continue
            result = measure(name, precision, steps=args.steps, warmup=args.warmup, batch=args.batch)
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
    section = table(results, device_name)
    print(section)
    payload = {"device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
               "results": results}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.write:
        replace_results(args.write, section, BEGIN, END)
    return 0 if all(r["finite"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
