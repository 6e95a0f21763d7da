"""Pillow helpers shared by the cleaners, augmenters and models.

Records carry the encoded file bytes, never decoded pixels (the cache stays small and
the source of truth stays the file). These helpers decode bytes with Pillow, normalise
colour modes, and encode images back to bytes. Imported lazily by the components, so
that ``privet plugins`` never pays for Pillow or numpy.
"""

from __future__ import annotations

import contextlib
import io
import threading
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

import privet

#: Modes holding one grey channel (after scaling to 8 bits).
GRAY_MODES = frozenset({"1", "L", "P;L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: File formats a re-encoding cleaner may write.
FORMATS = ("png", "jpeg")

_limits_lock = threading.Lock()


@contextlib.contextmanager
def pillow_limits(max_pixels: int | None, load_truncated: bool) -> Iterator[None]:
    """Set Pillow's process-wide bomb limit and truncated-file flag for one block.

    Pillow exposes both only as module globals; the lock keeps two threads of this
    plugin from interleaving their values, and the old values always come back.
    """
    with _limits_lock:
        old = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info)


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images scaled to 8 bits (Pillow would clip)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        arr = arr * 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else arr
        arr = np.nan_to_num(arr)
    else:
        arr = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def natural_mode(img: Image.Image) -> str:
    """``L`` for grey images, ``RGB`` for everything else (colour, palette, CMYK ...)."""
    if img.mode in GRAY_MODES or (img.mode == "LA"):
        return "L"
    return "RGB"


def to_mode(img: Image.Image, mode: str | None = None,
            background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert to ``RGB`` or ``L`` (``None``: the natural one of the two).

    Transparent pixels are composited onto ``background`` rather than dropped to black;
    CMYK, YCbCr, LAB and palette images go through Pillow's conversions; 16-bit and
    float greys are scaled, not clipped.
    """
    target = mode or natural_mode(img)
    if img.mode == target:
        return img
    if has_alpha(img):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        img = Image.alpha_composite(base, rgba).convert("RGB")
    elif img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit_gray(img)
    return img if img.mode == target else img.convert(target)


def exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos are often stored sideways)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is no reason to lose the picture
        return img
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def open_image(data: bytes) -> Image.Image:
    """Open and fully decode encoded bytes (raises Pillow's own errors)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def decode(data: bytes, mode: str | None = None, *, upright: bool = True) -> Image.Image:
    """Bytes -> PIL image in ``mode`` (``RGB``/``L``; ``None``: natural), upright.

    Raises :class:`privet.DropRecord` (``undecodable_image``) when the bytes are not a
    readable image, so ``model.encode`` skips the record with a reason.
    """
    if not data:
        raise privet.DropRecord("undecodable_image", "empty file")
    try:
        img = open_image(data)
        if upright:
            img = exif_upright(img)
        return to_mode(img, mode)
    except privet.DropRecord:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError ...
        raise privet.DropRecord("undecodable_image", f"{type(err).__name__}: {err}") from None


def encode(img: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """PIL image -> file bytes (PNG lossless, or JPEG at ``quality``)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        to_mode(img, "L" if natural_mode(img) == "L" else "RGB").save(
            buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=3)
    else:
        raise privet.ConfigError(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    return buf.getvalue()


def as_image(value: Any, mode: str | None = None) -> Any:
    """A record's ``image`` value as something torchvision transforms accept.

    Bytes are decoded to a PIL image (transforms on PIL images are the fastest on CPU,
    see docs/benchmarks-image.md); PIL images and tensors pass through unchanged.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode(bytes(value), mode)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    return value


def dhash(img: Image.Image, size: int = 8) -> int:
    """Difference hash: ``size * size`` bits, one per horizontally adjacent pixel pair.

    Robust to rescaling, recompression and small colour shifts; two images whose hashes
    differ in few bits look alike.
    """
    gray = to_mode(img, "L").resize((size + 1, size), Image.Resampling.LANCZOS)
    px = np.asarray(gray, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)
