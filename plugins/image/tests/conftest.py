"""Fixtures of the privet-image tests: a plugin host, image bytes of every awkward kind,
and folders of generated images (shapes drawn with Pillow, plus the bad files)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privet_image import plugin
from privet_image.shapes import write_folder


class Images:
    """Encoded test images, each made on the spot."""

    @staticmethod
    def save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    def noise(self, w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
        arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        return Image.fromarray(arr)

    def png(self, w: int = 48, h: int = 40, seed: int = 0) -> bytes:
        return self.save(self.noise(w, h, seed))

    def jpeg(self, w: int = 64, h: int = 48, seed: int = 0) -> bytes:
        return self.save(self.noise(w, h, seed), "JPEG", quality=90)

    def truncated_jpeg(self) -> bytes:
        data = self.jpeg(64, 64, seed=3)
        return data[: int(len(data) * 0.6)]

    def cmyk_jpeg(self) -> bytes:
        return self.save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)

    def rgba_png(self) -> bytes:
        img = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
        img.paste((0, 0, 255, 0), (0, 0, 20, 40))  # left half fully transparent
        return self.save(img)

    def gray_png(self) -> bytes:
        return self.save(Image.new("L", (30, 30), 128))

    def big_blank_png(self, side: int = 2000) -> bytes:
        """A real image of side x side pixels that compresses to a few kilobytes."""
        return self.save(Image.new("1", (side, side)))

    @staticmethod
    def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
        """A PNG whose header claims width x height pixels (a decompression bomb)."""
        def chunk(kind: bytes, body: bytes) -> bytes:
            return (struct.pack(">I", len(body)) + kind + body
                    + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

        ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))

    def exif_rotated_jpeg(self) -> bytes:
        """A 60x20 JPEG whose EXIF orientation (6) says: rotate 90 degrees to view."""
        exif = Image.Exif()
        exif[0x0112] = 6
        return self.save(self.noise(60, 20), "JPEG", exif=exif.tobytes())


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run two to a 2-core machine (pytest -n 2): more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def images() -> Images:
    return Images()


@pytest.fixture
def host():
    """A plugin host with the core built-ins and this plugin."""
    from privet.testing import make_test_host  # lazily: test modules load it as a pytest plugin

    h = make_test_host()
    h.register_plugin(plugin, "image")
    return h


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    """A small image folder: 3 shape classes x 12 PNG images of 32x32."""
    root = tmp_path / "shapes"
    write_folder(root, per_class=12, size=32, seed=1)
    return root


def _add_bad_files(root: Path, images: Images) -> dict[str, list[str]]:
    """Put every kind of bad and awkward file into the class folders of ``root``.

    Returns reason -> paths for the files ``image.verify`` must drop, plus the key
    ``valid_odd`` for the CMYK/RGBA/grey files it must keep.
    """
    files = {
        "truncated_image": {"circle/truncated.jpg": images.truncated_jpeg()},
        "empty_file": {"square/empty.png": b""},
        "not_an_image": {"triangle/notes.png": b"this is a text file, not a picture\n"},
        "decompression_bomb": {"circle/bomb.png": images.bomb_png()},
        "valid_odd": {"square/cmyk.jpg": images.cmyk_jpeg(), "triangle/rgba.png": images.rgba_png(),
                      "circle/gray.png": images.gray_png()},
    }
    out: dict[str, list[str]] = {}
    for reason, named in files.items():
        for rel, data in named.items():
            (root / rel).write_bytes(data)
            out.setdefault(reason, []).append(rel)
    return out


@pytest.fixture
def add_bad_files(images: Images):
    """``add_bad_files(root)``: see :func:`_add_bad_files`."""
    return lambda root: _add_bad_files(Path(root), images)
