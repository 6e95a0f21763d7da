"""A synthetic image-folder dataset: circles, squares and triangles drawn with Pillow.

For the example pipeline, the tests and the loader benchmark: a real classification
problem (position, size, colours and rotation vary) that a small CNN learns in
seconds, made on the spot without any download.

    python -m privet_image.shapes OUT_DIR --per-class 100 --size 32
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A dark background and a light foreground of random hues (or the reverse)."""
    dark = tuple(int(v) for v in rng.integers(0, 90, size=3))
    light = tuple(int(v) for v in rng.integers(150, 256, size=3))
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def render(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``shape`` at a random place, size, angle and colours."""
    bg, fg = _colours(rng)
    scale = 4  # draw large, then downsample: smooth edges
    big = size * scale
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.26, 0.42) * big
    cx, cy = rng.uniform(radius, big - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
    else:
        corners = 4 if shape == "square" else 3
        points = [(cx + radius * math.cos(angle + 2 * math.pi * k / corners),
                   cy + radius * math.sin(angle + 2 * math.pi * k / corners))
                  for k in range(corners)]
        draw.polygon(points, fill=fg)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def write_folder(root: str | Path, per_class: int = 100, size: int = 32, seed: int = 0,
                 shapes: tuple[str, ...] = SHAPES, fmt: str = "png") -> dict[str, int]:
    """Write ``root/SHAPE/NNNN.png`` (one subfolder per class); return counts per class."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    suffix = {"png": ".png", "jpeg": ".jpg"}[fmt]
    counts = {}
    for shape in shapes:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            render(shape, size, rng).save(folder / f"{i:04d}{suffix}",
                                          "JPEG" if fmt == "jpeg" else "PNG")
        counts[shape] = per_class
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (one subfolder per shape)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    args = parser.parse_args(argv)
    counts = write_folder(args.out, args.per_class, args.size, args.seed, fmt=args.format)
    print(f"wrote {sum(counts.values())} images to {args.out} ({', '.join(counts)})")


if __name__ == "__main__":
    main()
