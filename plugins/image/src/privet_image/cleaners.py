"""Cleaners that rewrite the image: colour mode and orientation, size, contrast.

Each decodes the record's bytes, changes the picture, and stores it re-encoded (PNG by
default, lossless), so the cache holds what training will see and workers decode
less. A record whose image is already as asked keeps its original bytes.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Literal, Optional

import attrs

import privet
from privet import OptionValueError, positive

from .tally import Tally

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def _rgb_triple(_instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if len(value) != 3 or any(not 0 <= int(v) <= 255 for v in value):
        raise OptionValueError(f"{attribute.name} must be three values 0-255 (red, green, "
                               f"blue), got {value}", attribute.name)


def _quality(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not 1 <= value <= 100:
        raise OptionValueError(f"{attribute.name} must be between 1 and 100, got {value}",
                               attribute.name)


class _Rewrite(privet.Cleaner):
    """Decode -> :meth:`transform` -> re-encode; unchanged images keep their bytes."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.tally = Tally("rewritten", "unchanged")

    def report(self) -> dict[str, int]:
        return self.tally.report()

    @abc.abstractmethod
    def transform(self, img: Image.Image) -> Image.Image:
        """The changed image, or ``img`` itself when nothing needs to change."""

    def clean(self, record: privet.Record) -> privet.Record | None:
        from .imaging import encode, open_image

        field = self.options.image_field
        data = record.get(field)
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise privet.DropRecord("missing_image", f"no bytes in field {field!r}")
        try:
            img = open_image(bytes(data))
        except Exception as err:
            raise privet.DropRecord("undecodable_image", f"{record.get('path', '')}: "
                                    f"{type(err).__name__}: {err}") from None
        out = self.transform(img)
        if out is img:
            self.tally.add("unchanged", record)
            return record
        self.tally.add("rewritten", record)
        return {**record, field: encode(out, self.options.format, self.options.quality)}


class Convert(_Rewrite):
    """Colour mode and orientation: CMYK, palette, RGBA, 16-bit grey ... -> RGB (or L).

    Transparent pixels are composited onto ``background``; the EXIF orientation tag is
    applied (``ImageOps.exif_transpose``) so phone photos stand upright.
    """

    @attrs.define(frozen=True)
    class Options:
        mode: Literal["RGB", "L"] = "RGB"
        background: list[int] = attrs.field(factory=lambda: [255, 255, 255], validator=_rgb_triple)
        exif_transpose: bool = True
        format: Literal["png", "jpeg"] = "png"
        quality: int = attrs.field(default=95, validator=_quality)
        image_field: str = "image"

    def transform(self, img: Image.Image) -> Image.Image:
        from .imaging import exif_upright, to_mode

        if self.options.exif_transpose:
            img = exif_upright(img)
        return to_mode(img, self.options.mode, tuple(self.options.background))


_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4}


class Resize(_Rewrite):
    """Bring every image to one size with an aspect policy.

    ``stretch`` resizes to ``size`` x ``height`` ignoring the aspect ratio; ``crop``
    scales to cover and cuts the centre; ``pad`` scales to fit and fills the border
    with ``fill``; ``keep`` scales so the shorter side is ``size`` (the usual
    preparation for random crops). Images are decoded upright, as RGB or grey.
    """

    @attrs.define(frozen=True)
    class Options:
        size: int = attrs.field(validator=positive)
        height: Optional[int] = attrs.field(default=None, validator=positive)
        aspect: Literal["pad", "crop", "stretch", "keep"] = "pad"
        fill: list[int] = attrs.field(factory=lambda: [0, 0, 0], validator=_rgb_triple)
        resample: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = "bicubic"
        format: Literal["png", "jpeg"] = "png"
        quality: int = attrs.field(default=95, validator=_quality)
        image_field: str = "image"

        def __attrs_post_init__(self) -> None:
            if self.aspect == "keep" and self.height is not None:
                raise OptionValueError("aspect 'keep' scales the shorter side to size; remove "
                                       "height", "height")

    def transform(self, img: Image.Image) -> Image.Image:
        from PIL import ImageOps

        from .imaging import exif_upright, to_mode

        o = self.options
        img = to_mode(exif_upright(img))
        resample = _RESAMPLE[o.resample]
        if o.aspect == "keep":
            w, h = img.size
            scale = o.size / min(w, h)
            target = (max(1, round(w * scale)), max(1, round(h * scale)))
        else:
            target = (o.size, o.height or o.size)
        if img.size == target:
            return img
        if o.aspect in ("stretch", "keep"):
            return img.resize(target, resample)
        if o.aspect == "crop":
            return ImageOps.fit(img, target, resample)
        fill = tuple(o.fill) if img.mode == "RGB" else round(sum(o.fill) / 3)
        return ImageOps.pad(img, target, resample, color=fill)


class Equalize(_Rewrite):
    """Histogram equalisation (``hist``) or CLAHE (``clahe``) with OpenCV.

    Colour images are equalised on the lightness channel of CIELAB, so hues do not
    shift. CLAHE limits contrast per ``tile_grid`` x ``tile_grid`` tile by
    ``clip_limit``, which avoids the noise blow-up of global equalisation.
    """

    @attrs.define(frozen=True)
    class Options:
        method: Literal["hist", "clahe"] = "clahe"
        clip_limit: float = attrs.field(default=2.0, validator=positive)
        tile_grid: int = attrs.field(default=8, validator=positive)
        format: Literal["png", "jpeg"] = "png"
        quality: int = attrs.field(default=95, validator=_quality)
        image_field: str = "image"

    def _equalize_channel(self, channel: Any) -> Any:
        import cv2  # imported lazily: OpenCV is slow to import

        o = self.options
        if o.method == "hist":
            return cv2.equalizeHist(channel)
        return cv2.createCLAHE(clipLimit=o.clip_limit,
                               tileGridSize=(o.tile_grid, o.tile_grid)).apply(channel)

    def transform(self, img: Image.Image) -> Image.Image:
        import cv2
        import numpy as np
        from PIL import Image

        from .imaging import exif_upright, to_mode

        img = to_mode(exif_upright(img))
        arr = np.ascontiguousarray(np.asarray(img))
        if img.mode == "L":
            return Image.fromarray(self._equalize_channel(arr))
        lab = cv2.cvtColor(arr, cv2.COLOR_RGB2LAB)
        lab[:, :, 0] = self._equalize_channel(np.ascontiguousarray(lab[:, :, 0]))
        return Image.fromarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))
