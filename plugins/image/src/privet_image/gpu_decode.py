"""Decode JPEG batches on the GPU and run the augmenters and resize/normalise there too.

With ``decode: gpu`` (or ``dali``) on an image source, DataLoader workers no longer
decode pixels: :func:`encode_image` turns a JPEG into a 1-D ``uint8`` tensor of its
bytes, and the random seeds each augmenter would have used are drawn from the engine's
per-sample generator exactly as on the CPU path. :class:`DeviceDecoder` then decodes the
whole batch at once on the model's device (``torchvision.io.decode_jpeg(list,
device="cuda")``, nvjpeg; or NVIDIA DALI's ``mixed`` decoder) and applies each
augmenter's ``transforms.v2`` transform per image under its seed, so random crops and
flips keep their per-sample parameters. Files the GPU decoder cannot take (PNG and other
formats, CMYK JPEGs, JPEGs with an EXIF rotation, JPEGs whose header claims more pixels
than Pillow's decompression-bomb limit) are decoded by Pillow in the worker, as before,
and counted: an image never reaches nvjpeg without the limits the CPU path applies.

The batch travels as :class:`EncodedBatch`, a plain object the training loop's
``_to_device`` leaves alone: ``decode_jpeg`` wants its input on the CPU. Nothing here
needs CUDA, so the same code runs on the CPU in tests (``device="cpu"``).
"""

from __future__ import annotations

import io
import sys
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Sequence

import privet

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Values of the sources' ``decode`` option.
DECODE_MODES = ("cpu", "gpu", "dali")
#: Record key where deferred augmenters leave the seeds they drew, in chain order.
SEEDS_KEY = "_privet_image_seeds"
#: The key path named by errors about the option.
OPTION_PATH = "data.source.options.decode"
_JPEG_MAGIC = b"\xff\xd8\xff"
#: Start-of-frame markers (baseline, extended, progressive, lossless ...), not DHT/JPG/DAC.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class DeviceImage:
    """One example from a worker: encoded JPEG bytes, or pixels Pillow decoded there."""

    __slots__ = ("data", "fallback", "seeds")

    def __init__(self, data: torch.Tensor, fallback: str | None, seeds: tuple[int, ...]) -> None:
        self.data = data  # 1-D uint8 bytes (fallback None) or uint8 (C, H, W) pixels
        self.fallback = fallback  # why the CPU decoded it (not_jpeg, cmyk, exif_orientation)
        self.seeds = seeds


class EncodedBatch:
    """A batch whose images are still encoded; the model's ``step`` decodes it.

    Deliberately not a tensor, list, tuple or dict, so that the loop's ``_to_device``
    passes it through untouched (the encoded bytes must stay on the CPU).
    """

    def __init__(self, images: list[DeviceImage], labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` from a JPEG's frame header (components: 1 grey,
    3 YCbCr/RGB, 4 CMYK); None when no frame header is found in the bytes."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 9 >= n:
                return None
            return (int.from_bytes(data[i + 5:i + 7], "big"),
                    int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9])
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 when absent); Pillow reads the header only."""
    if b"Exif\x00\x00" not in data[:65536]:
        return 1
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # unreadable header: let the decoder decide
        return 1


def _max_pixels() -> float:
    """Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``; None: no limit)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return float("inf") if limit is None else limit


def cpu_reason(data: bytes) -> str | None:
    """Why these bytes must be decoded on the CPU, or None when the GPU can take them."""
    if not data.startswith(_JPEG_MAGIC):
        return "not_jpeg"
    frame = jpeg_frame(data)
    if frame is not None and frame[0] * frame[1] > _max_pixels():
        return "too_large"  # Pillow's decompression-bomb limit decides, as on the CPU path
    if frame is not None and frame[2] == 4:
        return "cmyk"  # nvjpeg and Pillow convert CMYK differently; Pillow decides
    if _exif_orientation(data) != 1:
        return "exif_orientation"  # decode_jpeg applies it on the CPU only
    return None


def encode_image(data: bytes, mode: str, seeds: tuple[int, ...] = ()) -> DeviceImage:
    """Worker side: JPEG bytes as a tensor, anything else decoded by Pillow (``mode``:
    ``RGB`` or ``L``). Undecodable fallbacks raise :class:`privet.DropRecord`."""
    import torch

    from .imaging import decode

    reason = cpu_reason(data)
    if reason is None:
        return DeviceImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), None, seeds)
    from torchvision.transforms.v2 import functional as F

    pixels = F.pil_to_tensor(decode(data, mode))
    return DeviceImage(pixels, reason, seeds)


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported (``pip install nvidia-dali-cuda120``)."""
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def check_cuda(mode: str, device: Any, *, file: str | None = None,
               line: int | None = None) -> None:
    """Raise the one-line error of ``decode: gpu``/``dali`` without a CUDA device."""
    import torch

    if mode == "cpu":
        return
    if not torch.cuda.is_available():
        raise privet.ConfigError(f"decode: {mode} requires CUDA, and this machine has no CUDA "
                                 f"device; use decode: cpu (the default)", path=OPTION_PATH,
                                 file=file, line=line)
    if device is not None and getattr(device, "type", None) != "cuda":
        raise privet.ConfigError(f"decode: {mode} requires CUDA, but the run trains on "
                                 f"{device}; set train.device to auto or cuda, or use "
                                 f"decode: cpu", path=OPTION_PATH, file=file, line=line)


class DeviceDecoder:
    """Decodes :class:`EncodedBatch` on a device, augments per image, preprocesses, stacks.

    ``augment`` holds one ``apply(image, seed)`` per augmenter of the chain; ``finish``
    is the model's own preprocessing (resize to ``input_size``, scale, normalise), so
    the GPU path reuses the CPU path's code, not a copy of it. ``counts`` says how many
    images each decoder handled (``report.json``, ``model.decode``).
    """

    def __init__(self, backend: str, channels: int, augment: Sequence[Callable[[Any, int], Any]],
                 finish: Callable[[Any], Any]) -> None:
        if backend not in ("gpu", "dali"):
            raise ValueError(f"backend must be gpu or dali, got {backend!r}")
        self.backend = backend
        self.channels = channels
        self.augment = list(augment)
        self.finish = finish
        self.counts: Counter[str] = Counter()
        self._dali: Any = None

    @property
    def read_mode(self) -> str:
        return "GRAY" if self.channels == 1 else "RGB"

    def report(self) -> dict[str, Any]:
        return {"backend": self.backend, **dict(sorted(self.counts.items()))}

    def __call__(self, batch: EncodedBatch, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (N, C, S, S) float and labels on ``device``; images no decoder can read
        are left out and counted (``undecodable_image``)."""
        import torch

        pixels = self.decode(batch.images, device)
        kept = [i for i, p in enumerate(pixels) if p is not None]
        if not kept:
            raise privet.DataError("no image of a batch could be decoded; add the image.verify "
                                   "cleaner to drop unreadable files when the data is prepared")
        out = []
        for i in kept:
            x = pixels[i]
            for apply, seed in zip(self.augment, batch.images[i].seeds):
                x = apply(x, seed)
            out.append(self.finish(x))
        labels = batch.labels if len(kept) == len(pixels) else batch.labels[kept]
        return torch.stack(out), labels.to(device, non_blocking=True)

    def decode(self, images: list[DeviceImage], device: Any) -> list[torch.Tensor | None]:
        """Every image as uint8 (C, H, W) on ``device``, or None where it cannot be read."""
        out: list[Any] = [None] * len(images)
        jpegs = []
        for i, img in enumerate(images):
            if img.fallback is None:
                jpegs.append(i)
            else:
                out[i] = img.data.to(device, non_blocking=True)
                self.counts[f"cpu_fallback_{img.fallback}"] += 1
        if jpegs:
            for i, x in zip(jpegs, self._decode_jpegs([images[i].data for i in jpegs], device)):
                out[i] = x
        return out

    def _decode_jpegs(self, data: list[torch.Tensor], device: Any) -> list[torch.Tensor | None]:
        """The batched decode; if it fails, one image at a time, then Pillow, so one bad
        file costs its own image, not the batch."""
        try:
            decoded = self._batch_decode(data, device)
            self.counts[f"{self.backend}_decoded"] += len(decoded)
            return list(decoded)
        except RuntimeError:
            pass
        out: list[Any] = []
        for d in data:
            try:
                out.append(self._batch_decode([d], device)[0])
                self.counts[f"{self.backend}_decoded"] += 1
            except RuntimeError:
                out.append(self._pillow(d, device))
        return out

    def _pillow(self, data: torch.Tensor, device: Any) -> torch.Tensor | None:
        from torchvision.transforms.v2 import functional as F

        from .imaging import decode

        try:
            img = decode(data.numpy().tobytes(), "L" if self.channels == 1 else "RGB")
        except privet.DropRecord:
            self.counts["undecodable_image"] += 1
            return None
        self.counts["cpu_fallback_decode_error"] += 1
        return F.pil_to_tensor(img).to(device)

    def _batch_decode(self, data: list[torch.Tensor], device: Any) -> list[torch.Tensor]:
        if self.backend == "dali" and getattr(device, "type", str(device)) == "cuda":
            return self._dali_decode(data, device)
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode[self.read_mode], device=device)

    def _dali_decode(self, data: list[torch.Tensor], device: Any) -> list[torch.Tensor]:
        """NVIDIA DALI's ``mixed`` decoder (host parses, GPU decodes), one pipeline per
        largest batch size seen; outputs are copied into torch tensors (HWC -> CHW)."""
        import numpy as np
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self._dali is None or self._dali.max_batch_size < len(data):
            self._dali = _dali_pipeline(len(data), torch.device(device).index or 0,
                                        self.read_mode)
        self._dali.feed_input("jpegs", [np.frombuffer(d.numpy(), dtype=np.uint8) for d in data])
        (decoded,) = self._dali.run()
        stream = torch.cuda.current_stream(device)
        out = []
        for i in range(len(data)):
            tensor = decoded[i]
            target = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=device)
            feed_ndarray(tensor, target, cuda_stream=stream)
            out.append(target.permute(2, 0, 1))
        return out


def _dali_pipeline(batch_size: int, device_id: int, mode: str) -> Any:
    """A built DALI pipeline: an external source of encoded bytes -> ``decoders.image``."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=device_id,
                  prefetch_queue_depth=1)
    def decode_pipeline() -> Any:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        return fn.decoders.image(jpegs, device="mixed",
                                 output_type=types.GRAY if mode == "GRAY" else types.RGB)

    pipe = decode_pipeline()
    pipe.build()
    return pipe


def backend_for(mode: str) -> str:
    """The decoder a ``decode`` mode gets: ``dali`` without DALI installed falls back to
    torchvision's nvjpeg decoder, saying so once."""
    if mode == "dali" and not dali_available():
        print("privet-image: decode: dali, but NVIDIA DALI is not installed "
              "(pip install nvidia-dali-cuda120); decoding with torchvision on the GPU instead",
              file=sys.stderr)
        return "gpu"
    return mode


def configure(run: Any) -> None:
    """``before_run``: with ``decode: gpu``/``dali``, check CUDA and the chain, then hand
    the decoding to the model's ``step`` and tell the augmenters to only draw seeds."""
    from .augmenters import TorchvisionAugmenter
    from .models import ImageClassifier
    from .sources import ImageFolder, Manifest

    c = run.components
    mode = getattr(c.source.options, "decode", "cpu") if isinstance(
        c.source, (ImageFolder, Manifest)) else "cpu"
    if mode == "cpu":
        return
    where = {"file": run.loaded.file, "line": run.loaded.lines.get(OPTION_PATH)}
    check_cuda(mode, run.device, **where)
    model = c.model
    if not isinstance(model, ImageClassifier):
        raise privet.ConfigError(f"decode: {mode} needs an image model (image.cnn, image.resnet, "
                                 f"image.vit), not {model.name!r}", path=OPTION_PATH, **where)
    field = model.options.image_field
    for i, aug in enumerate(c.augmenters):
        if not isinstance(aug, TorchvisionAugmenter) or aug.options.image_field != field:
            raise privet.ConfigError(
                f"decode: {mode} runs the image plugin's augmenters on the GPU, on field "
                f"{field!r}; data.augmenters.{i} ({aug.name}) is not one of them, or reads "
                f"another field; use decode: cpu with it", path=OPTION_PATH, **where)
    for aug in c.augmenters:
        aug.defer_to_device()
    model.use_device_decode(DeviceDecoder(backend_for(mode), model.options.channels,
                                          [aug.apply for aug in c.augmenters], model.preprocess))
