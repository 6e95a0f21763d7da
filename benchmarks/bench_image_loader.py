"""Image loading throughput: Privet's loader against a hand-written torchvision one.

Both read the same JPEG files and do the same work per image, in 2 DataLoader workers:
decode -> RandomResizedCrop(224) -> horizontal flip -> colour jitter -> float tensor
normalised with ImageNet's mean and std -> batches of 64.

* **privet**: ``image.folder`` records (the encoded bytes) in the engine's memory-mapped
  Arrow cache, read by ``privet.data.loader.make_loader`` (the loader ``privet run``
  uses): per-sample seeded augmenters ``image.random_resized_crop``, ``image.flip``,
  ``image.color_jitter``, then ``model.encode`` and ``model.collate``.
* **torchvision**: ``torchvision.datasets.ImageFolder`` with a ``transforms.v2.Compose``
  of the same transforms and a plain ``DataLoader(shuffle=True)``.

Each round times one full epoch of each (worker start-up included, as a real epoch
pays it), interleaved so that drift on a shared machine hits both alike; the result is
the median images/s over the rounds. Target: privet >= 0.95x torchvision.

    python benchmarks/bench_image_loader.py                  # print the results
    python benchmarks/bench_image_loader.py --write docs/benchmarks-image.md
    python benchmarks/bench_image_loader.py --check          # exit 1 if the target is missed
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, replace_results

TARGET = 0.95
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_images(root: Path, n: int, width: int, height: int, classes: int = 4) -> None:
    """``n`` photo-like JPEGs (smooth colour fields plus grain), spread over class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", "JPEG", quality=90)


def privet_loader(root: Path, cache: Path, batch: int, workers: int):
    """The engine's loader over an Arrow cache of ``image.folder`` records."""
    from privet.data.arrow import ArrowShardWriter, ArrowTable
    from privet.data.loader import make_loader
    from privet.testing import make_test_host
    from privet_image import plugin

    host = make_test_host()
    host.register_plugin(plugin, "image")
    source = host.make("source", "image.folder", {"root": str(root)})
    writer = ArrowShardWriter(cache, "train", 50_000)
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
    loader = make_loader(table, model, augmenters, batch_size=batch, seed=0, train=True,
                         shuffle=True, num_workers=workers)

    def images_in(loaded):
        return int(loaded.batch[0].shape[0])

    return loader, images_in


def torchvision_loader(root: Path, batch: int, workers: int):
    """What one writes by hand: ImageFolder + transforms.v2 + DataLoader."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomResizedCrop(224, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])
    dataset = ImageFolder(str(root), transform=transform)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        multiprocessing_context="fork" if workers > 0 else None)

    def images_in(loaded):
        return int(loaded[0].shape[0])

    return loader, images_in


def time_epoch(loader, images_in) -> tuple[float, int]:
    """Seconds for one full epoch (worker start-up included) and the images it gave."""
    start = time.perf_counter()
    n = sum(images_in(b) for b in loader)
    return time.perf_counter() - start, n


def measure(n_images: int, width: int, height: int, batch: int, workers: int,
            rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "images", Path(tmp) / "cache"
        make_images(root, n_images, width, height)
        loaders = {"privet": privet_loader(root, cache, batch, workers),
                   "torchvision": torchvision_loader(root, batch, workers)}
        for loader, images_in in loaders.values():  # warm-up: file cache, first imports
            time_epoch(loader, images_in)
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for r in range(rounds):
            order = list(loaders) if r % 2 == 0 else list(reversed(loaders))
            for name in order:
                seconds, n = time_epoch(*loaders[name])
                if n != n_images:
                    raise SystemExit(f"{name} loader gave {n} images, expected {n_images}")
                rates[name].append(n / seconds)
        return rates


def versions() -> str:
    import PIL
    import torch
    import torchvision

    import privet

    return (f"Python {platform.python_version()}, privet {privet.__version__}, torch "
            f"{torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}")


def report(rates: dict[str, list[float]], args: argparse.Namespace) -> tuple[str, bool]:
    med = {name: statistics.median(v) for name, v in rates.items()}
    ratio = med["privet"] / med["torchvision"]
    ok = ratio >= TARGET
    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Software: {versions()}",
        f"- Data: {args.images} JPEG files of {args.width}x{args.height} (quality 90), "
        f"batch {args.batch}, {args.workers} DataLoader workers",
        f"- Method: median images/s over {args.rounds} interleaved epochs per loader after one "
        f"warm-up epoch each (`benchmarks/bench_image_loader.py`)",
        "",
        "| Loader | Median images/s | Min | Max |",
        "|---|---|---|---|",
    ]
    for name, values in rates.items():
        lines.append(f"| {name} | {med[name]:.0f} | {min(values):.0f} | {max(values):.0f} |")
    lines += ["", "| Ratio | Value | Target | Met |", "|---|---|---|---|",
              f"| privet / torchvision | {ratio:.2f}x | >= {TARGET}x | {'yes' if ok else 'NO'} |"]
    return "\n".join(lines), ok


BEGIN = "<!-- results: written by benchmarks/bench_image_loader.py --write -->"
END = "<!-- end of results -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, help="update the results section of this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    rates = measure(args.images, args.width, args.height, args.batch, args.workers, args.rounds)
    results, ok = report(rates, args)
    print(results)
    if args.write:
        replace_results(args.write, results + "\n", BEGIN, END)
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
