"""Image decoding on the GPU (``decode: gpu`` / ``dali``) against the CPU loader.

The same JPEG files and the same work per image as ``bench_image_loader.py``: decode ->
RandomResizedCrop(224) -> horizontal flip -> colour jitter -> float tensor normalised
with ImageNet's mean and std -> batches of 64, delivered on the GPU. Each mode uses the
engine's own loader (``privet.data.loader.make_loader``) over an Arrow cache of
``image.folder`` records, in ``--workers`` DataLoader workers:

* **cpu**: the default: Pillow decodes and augments in the workers; the batch is copied
  to the GPU (pinned memory, as ``privet run`` does on CUDA).
* **gpu**: ``decode: gpu``: the workers ship the JPEG bytes and the augmenters' seeds;
  the batch is decoded by ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvjpeg)
  and augmented and normalised on the GPU (``privet_image.gpu_decode.DeviceDecoder``,
  which the image model's ``step`` calls).
* **dali**: as gpu with NVIDIA DALI's ``mixed`` decoder, when DALI is installed.

Each round times one full epoch per mode (worker start-up included), interleaved; the
result is the median images/s. It prints a line for ``docs/benchmarks.md``.

    python benchmarks/bench_image_decode_gpu.py
    python benchmarks/bench_image_decode_gpu.py --workers 8 --images 4096 --width 640 --height 480

Without CUDA it stops at once saying so (exit code 2); ``--device cpu`` runs the device
path on the CPU instead, which only checks that the script works.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import machine
from bench_image_loader import make_images, versions


def make_loader_for(root: Path, cache: Path, mode: str, batch: int, workers: int, device):
    """The engine's loader for one decode mode, and a function that turns one of its
    batches into (pixels, labels) on ``device``."""
    from privet.data.arrow import ArrowShardWriter, ArrowTable
    from privet.data.loader import make_loader
    from privet.testing import make_test_host
    from privet_image import gpu_decode, plugin

    host = make_test_host()
    host.register_plugin(plugin, "image")
    source = host.make("source", "image.folder", {"root": str(root)})
    writer = ArrowShardWriter(cache / mode, "train", 50_000)
    for shard in source.shards():
        for record in source.read(shard):
            writer.add(record)
    table = ArrowTable(writer.close())
    model = host.make("model", "image.resnet", {"input_size": 224, "aspect": "crop"})
    model.load_state_dict({"classes": sorted({r["label"] for r in table.iter_rows()})})
    augmenters = [host.make("augmenter", "image.random_resized_crop", {"size": 224}),
                  host.make("augmenter", "image.flip", {"horizontal": 0.5}),
                  host.make("augmenter", "image.color_jitter",
                            {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4})]
    if mode != "cpu":  # what gpu_decode.configure does at the start of a run
        for aug in augmenters:
            aug.defer_to_device()
        model.use_device_decode(gpu_decode.DeviceDecoder(
            mode, 3, [a.apply for a in augmenters], model.preprocess))
    loader = make_loader(table, model, augmenters, batch_size=batch, seed=0, train=True,
                         shuffle=True, num_workers=workers, pin_memory=device.type == "cuda")

    def to_device(loaded):
        if mode == "cpu":
            x, y = loaded.batch
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return model.device_decoder(loaded.batch, device)

    return loader, to_device


def time_epoch(loader, to_device, device) -> tuple[float, int]:
    """Seconds for one full epoch on ``device`` (worker start-up included), and images."""
    import torch

    start = time.perf_counter()
    n = 0
    for loaded in loader:
        x, _ = to_device(loaded)
        n += int(x.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, n


def measure(args: argparse.Namespace, device, modes: list[str]) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "images", Path(tmp) / "cache"
        make_images(root, args.images, args.width, args.height)
        loaders = {m: make_loader_for(root, cache, m, args.batch, args.workers, device)
                   for m in modes}
        for loader, to_device in loaders.values():  # warm-up: file cache, CUDA, nvjpeg
            time_epoch(loader, to_device, device)
        rates: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for m in (modes if r % 2 == 0 else list(reversed(modes))):
                seconds, n = time_epoch(*loaders[m], device)
                if n != args.images:
                    raise SystemExit(f"{m} gave {n} images, expected {args.images}")
                rates[m].append(n / seconds)
        return rates


def report(rates: dict[str, list[float]], args: argparse.Namespace, device) -> str:
    import torch

    med = {m: statistics.median(v) for m, v in rates.items()}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU (--device cpu)"
    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}; {gpu}",
        f"- Software: {versions()}",
        f"- Data: {args.images} JPEG files of {args.width}x{args.height} (quality 90), batch "
        f"{args.batch}, {args.workers} DataLoader workers, RandomResizedCrop(224) + flip + "
        f"colour jitter + normalise, delivered on {device}",
        f"- Method: median images/s over {args.rounds} interleaved epochs per mode after one "
        f"warm-up epoch each (`benchmarks/bench_image_decode_gpu.py`)",
        "",
        "| Decode | Median images/s | Min | Max | vs cpu |",
        "|---|---|---|---|---|",
    ]
    for m, values in rates.items():
        lines.append(f"| {m} | {med[m]:.0f} | {min(values):.0f} | {max(values):.0f} | "
                     f"{med[m] / med['cpu']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    args = parser.parse_args()
    import torch

    from privet_image import gpu_decode

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_image_decode_gpu: no CUDA device on this machine; nothing to measure "
              "(--device cpu checks the script on the CPU)", file=sys.stderr)
        sys.exit(2)
    modes = ["cpu", "gpu"] + (["dali"] if gpu_decode.dali_available() and
                              device.type == "cuda" else [])
    print(report(measure(args, device, modes), args, device))


if __name__ == "__main__":
    main()
