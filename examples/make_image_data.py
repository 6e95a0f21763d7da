"""Write a small image-folder dataset for examples/image_shapes.yaml (Pillow only, seeded).

    python examples/make_image_data.py            # writes examples/data/shapes/
    python examples/make_image_data.py --out DIR --per-class 200 --size 32

One subfolder per class (circle/, square/, triangle/) of PNG images drawn at random
places, sizes, angles and colours, plus the mess real folders have, each in a class
folder: a truncated JPEG, a zero-byte file, a text file named .png, a decompression
bomb (a PNG header claiming 10 gigapixels), a CMYK JPEG, an RGBA PNG, a greyscale PNG
and an exact duplicate. ``image.verify`` drops the first four with their reasons,
``image.convert`` turns the next three into RGB, ``image.dedupe`` drops the duplicate.
"""

from __future__ import annotations

import argparse
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from privet_image.shapes import render, write_folder


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def add_mess(root: Path, size: int) -> list[str]:
    """Write the awkward files into the class folders; return their paths."""
    def shape(name: str, seed: int) -> Image.Image:
        # a fresh drawing for each odd file: none may be a duplicate of another image
        return render(name, size, np.random.default_rng(10_000 + seed))

    jpeg = _encoded(shape("circle", 0).resize((64, 64)), "JPEG", quality=90)
    rgba = shape("square", 1).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 180))
    files = {
        "circle/truncated.jpg": jpeg[: len(jpeg) * 6 // 10],
        "square/empty.png": b"",
        "triangle/readme.png": b"this is a text file with an image suffix\n",
        "circle/bomb.png": _png_bomb(),
        "circle/cmyk.jpg": _encoded(shape("circle", 2).convert("CMYK"), "JPEG", quality=95),
        "square/rgba.png": _encoded(rgba, "PNG"),
        "triangle/grey.png": _encoded(shape("triangle", 3).convert("L"), "PNG"),
        "circle/copy-of-0004.png": (root / "circle" / "0004.png").read_bytes(),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return list(files)


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=here / "data" / "shapes")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mess", action="store_true", help="only clean shape images")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    counts = write_folder(args.out, args.per_class, args.size, args.seed)
    mess = [] if args.no_mess else add_mess(args.out, args.size)
    print(f"wrote {sum(counts.values())} shape images and {len(mess)} awkward files to {args.out}")


if __name__ == "__main__":
    main()
