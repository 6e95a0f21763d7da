"""``image.verify``: the gate every image passes before it is cached.

A truncated upload, a zero-byte file, a text file named ``.png`` or a decompression
bomb would otherwise surface as a crash in a DataLoader worker hours into a run. This
cleaner decodes each image once, at data preparation, and drops the bad ones with a
reason the run report counts.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Literal, Optional

import attrs

import privet
from privet import positive

from .tally import Tally

#: Pillow's own default for ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels).
PILLOW_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


def _classify(err: BaseException) -> str:
    """Map a Pillow error to a stable drop reason."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not_an_image"
    if isinstance(err, Image.DecompressionBombError):
        return "decompression_bomb"
    if "truncated" in str(err).lower() or isinstance(err, EOFError):
        return "truncated_image"
    return "corrupt_image"


def _safe_relpath(path: str) -> str:
    """A record's path turned into a relative path that cannot leave the quarantine."""
    parts = [p for p in re.split(r"[\\/]+", path) if p not in ("", ".", "..")]
    return "/".join(parts)


class Verify(privet.Cleaner):
    """Drop undecodable images with a reason; optionally repair truncated ones or quarantine.

    Reasons: ``missing_image`` (no bytes in the record), ``empty_file``, ``not_an_image``
    (not a format Pillow knows: a text file named ``.png``), ``decompression_bomb``
    (more than ``max_pixels``), ``too_small`` (a side under ``min_side``),
    ``truncated_image`` and ``corrupt_image``. With ``repair_truncated`` a truncated
    file is decoded as far as it goes (Pillow's ``LOAD_TRUNCATED_IMAGES``; the rest is
    grey) and re-encoded as ``repair_format``. With ``quarantine`` every dropped file's
    bytes are copied to ``quarantine/REASON/PATH`` for a person to look at.
    """

    @attrs.define(frozen=True)
    class Options:
        max_pixels: int = attrs.field(default=PILLOW_MAX_PIXELS, validator=positive)
        min_side: int = attrs.field(default=1, validator=positive)
        repair_truncated: bool = False
        repair_format: Literal["png", "jpeg"] = "png"
        quarantine: Optional[Path] = None
        image_field: str = "image"
        path_field: str = "path"

    def __init__(self, options: object = None) -> None:
        super().__init__(options)
        self.tally = Tally("checked", "repaired", "quarantined")

    def report(self) -> dict[str, int]:
        return self.tally.report()

    def clean(self, record: privet.Record) -> privet.Record | None:
        o = self.options
        self.tally.add("checked", record, o.path_field)
        data = record.get(o.image_field)
        if not isinstance(data, (bytes, bytearray)):
            raise privet.DropRecord("missing_image", f"no bytes in field {o.image_field!r}")
        if not data:
            self._reject(record, "empty_file", "0 bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF; the checks below decide
            reason, detail = self._check(bytes(data))
            if reason == "truncated_image" and o.repair_truncated:
                repaired = self._repair(bytes(data))
                if repaired is not None:
                    self.tally.add("repaired", record, o.path_field)
                    return {**record, o.image_field: repaired}
        if reason:
            self._reject(record, reason, detail)
        return record

    def _check(self, data: bytes) -> tuple[str, str]:
        """('', '') for a good image, else (reason, detail)."""
        import io

        from PIL import Image

        from .imaging import pillow_limits

        o = self.options
        # The bomb limit is ours (configurable, exact message), so Pillow's is lifted.
        with pillow_limits(None, False):
            try:
                img = Image.open(io.BytesIO(data))
                width, height = img.size
            except Exception as err:
                reason = _classify(err)
                if reason == "not_an_image":
                    return reason, "not in an image format Pillow can read"
                return reason, f"{type(err).__name__}: {err}"
            if width * height > o.max_pixels:
                return "decompression_bomb", (f"{width}x{height} = {width * height} pixels > "
                                              f"max_pixels {o.max_pixels}")
            if min(width, height) < o.min_side:
                return "too_small", f"{width}x{height} < min_side {o.min_side}"
            try:
                img.verify()  # structure and checksums, without decoding
                Image.open(io.BytesIO(data)).load()  # every pixel decodes
            except Exception as err:
                return _classify(err), f"{type(err).__name__}: {err}"
        return "", ""

    def _repair(self, data: bytes) -> bytes | None:
        from .imaging import encode, open_image, pillow_limits

        with pillow_limits(self.options.max_pixels, True):
            try:
                img = open_image(data)
            except Exception:
                return None
        return encode(img, self.options.repair_format)

    def _reject(self, record: privet.Record, reason: str, detail: str) -> None:
        o = self.options
        path = record.get(o.path_field)
        if o.quarantine is not None:
            data = bytes(record.get(o.image_field) or b"")
            rel = _safe_relpath(path) if isinstance(path, str) and path else ""
            rel = rel or hashlib.sha256(data).hexdigest()[:16]
            target = Path(o.quarantine) / reason / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.tally.add("quarantined", record, o.path_field)
        where = f"{path}: " if isinstance(path, str) and path else ""
        # A too-small image is filtered on purpose, not broken: it does not count as bad.
        raise privet.DropRecord(reason, f"{where}{detail}", bad=reason != "too_small")
