"""Augmenters: torchvision ``transforms.v2``, seeded per sample from the engine's rng.

torchvision's random transforms draw from torch's global generator. Each augmenter
draws one seed from the engine's per-sample ``numpy`` generator and runs its transform
inside ``torch.random.fork_rng`` with that seed, so the same (seed, epoch, index)
gives the same pixels in any worker, and the global generator is left as it was.

The first augmenter of a chain decodes the record's bytes to a PIL image and stores
it back in the record; the next ones and ``model.encode`` use it as it is, so a chain
decodes once. PIL (not a tensor) because torchvision's transforms are fastest on PIL
images on CPU (docs/benchmarks-image.md). A record whose bytes do not decode is passed
on untouched: ``model.encode`` drops it with a reason.

With ``decode: gpu`` (:meth:`TorchvisionAugmenter.defer_to_device`) an augmenter only
draws its seed in the worker; the model's ``step`` applies :meth:`~TorchvisionAugmenter.apply`
to the decoded CUDA tensor under that seed (``gpu_decode.py``).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Literal

import attrs

import privet
from privet import OptionValueError, positive, probability

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _range(_instance: object, attribute: attrs.Attribute, value: list[float]) -> None:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise OptionValueError(f"{attribute.name} must be [low, high] with 0 < low <= high, "
                               f"got {value}", attribute.name)


def _non_negative(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise OptionValueError(f"{attribute.name} must be 0 or more, got {value}", attribute.name)


def _hue(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value <= 0.5:
        raise OptionValueError(f"{attribute.name} must be between 0 and 0.5, got {value}",
                               attribute.name)


def _fill(_instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if len(value) not in (1, 3) or any(not 0 <= v <= 255 for v in value):
        raise OptionValueError(f"{attribute.name} must be one grey value or three RGB values "
                               f"0-255, got {value}", attribute.name)


class TorchvisionAugmenter(privet.Augmenter):
    """Base: decode once, then apply :meth:`transform` under a per-sample torch seed.

    Subclasses return a ``transforms.v2`` transform built from their options; it is
    built once per process and reused.
    """

    @attrs.define(frozen=True)
    class Options:
        image_field: str = "image"

    @abc.abstractmethod
    def transform(self) -> Any:
        """The ``torchvision.transforms.v2`` transform this augmenter applies."""

    def augment(self, record: privet.Record, rng: np.random.Generator) -> privet.Record:
        from .imaging import as_image

        field = self.options.image_field
        seed = int(rng.integers(2**62))
        if self.__dict__.get("_on_device"):
            # decode: gpu: only the seed is drawn here; model.step applies the transform
            # to the decoded batch on the GPU (gpu_decode.DeviceDecoder) under this seed.
            from .gpu_decode import SEEDS_KEY

            return {**record, SEEDS_KEY: (*record.get(SEEDS_KEY, ()), seed)}
        try:
            image = as_image(record[field])
        except (privet.DropRecord, KeyError):
            return record  # model.encode drops it, with the reason
        return {**record, field: self.apply(image, seed)}

    def apply(self, image: Any, seed: int) -> Any:
        """The transform on one image (PIL or a tensor on any device), under ``seed``.

        torchvision's random transforms draw their parameters from the CPU generator
        even for CUDA tensors, so a seed gives the same crop or flip on either path.
        """
        import torch

        tf = self.__dict__.get("_transform")
        if tf is None:
            tf = self.__dict__["_transform"] = self.transform()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also format a stack trace to
            # queue a CUDA seeding on every sample, in workers where CUDA is not started.
            torch.default_generator.manual_seed(seed)
            return tf(image)

    def defer_to_device(self) -> None:
        """``decode: gpu``: from now on :meth:`augment` only draws and records seeds."""
        self.__dict__["_on_device"] = True

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers may receive a pickled copy: rebuild the transform there.
        return {k: v for k, v in self.__dict__.items() if k != "_transform"}


class RandomResizedCrop(TorchvisionAugmenter):
    """Crop a random part (``scale`` of the area, ``ratio`` of aspect) and resize it to ``size``."""

    @attrs.define(frozen=True)
    class Options:
        size: int = attrs.field(default=224, validator=positive)
        scale: list[float] = attrs.field(factory=lambda: [0.08, 1.0], validator=_range)
        ratio: list[float] = attrs.field(factory=lambda: [3 / 4, 4 / 3], validator=_range)
        image_field: str = "image"

        def __attrs_post_init__(self) -> None:
            if self.scale[1] > 1.0:
                raise OptionValueError(f"scale must lie within (0, 1], got {self.scale}", "scale")

    def transform(self) -> Any:
        from torchvision.transforms import v2

        o = self.options
        return v2.RandomResizedCrop(o.size, scale=tuple(o.scale), ratio=tuple(o.ratio),
                                    antialias=True)


class RandomRotation(TorchvisionAugmenter):
    """Rotate by a random angle in [-degrees, degrees]; corners are filled with ``fill``."""

    @attrs.define(frozen=True)
    class Options:
        degrees: float = attrs.field(default=15.0, validator=_non_negative)
        fill: list[int] = attrs.field(factory=lambda: [0], validator=_fill)
        interpolation: Literal["nearest", "bilinear"] = "bilinear"
        image_field: str = "image"

    def transform(self) -> Any:
        from torchvision.transforms import InterpolationMode, v2

        o = self.options
        fill = o.fill[0] if len(o.fill) == 1 else tuple(o.fill)
        return v2.RandomRotation(o.degrees, interpolation=InterpolationMode(o.interpolation),
                                 fill=fill)


class RandomFlip(TorchvisionAugmenter):
    """Mirror left-right with probability ``horizontal`` and upside down with ``vertical``."""

    @attrs.define(frozen=True)
    class Options:
        horizontal: float = attrs.field(default=0.5, validator=probability)
        vertical: float = attrs.field(default=0.0, validator=probability)
        image_field: str = "image"

        def __attrs_post_init__(self) -> None:
            if self.horizontal == 0 and self.vertical == 0:
                raise OptionValueError("horizontal and vertical are both 0: the flip would do "
                                       "nothing", "horizontal")

    def transform(self) -> Any:
        from torchvision.transforms import v2

        o = self.options
        steps = []
        if o.horizontal > 0:
            steps.append(v2.RandomHorizontalFlip(o.horizontal))
        if o.vertical > 0:
            steps.append(v2.RandomVerticalFlip(o.vertical))
        return v2.Compose(steps)


class ColorJitter(TorchvisionAugmenter):
    """Random brightness, contrast and saturation factors in [1-x, 1+x], hue shift in [-h, h]."""

    @attrs.define(frozen=True)
    class Options:
        brightness: float = attrs.field(default=0.4, validator=_non_negative)
        contrast: float = attrs.field(default=0.4, validator=_non_negative)
        saturation: float = attrs.field(default=0.4, validator=_non_negative)
        hue: float = attrs.field(default=0.0, validator=_hue)
        image_field: str = "image"

    def transform(self) -> Any:
        from torchvision.transforms import v2

        o = self.options
        return v2.ColorJitter(brightness=o.brightness or None, contrast=o.contrast or None,
                              saturation=o.saturation or None, hue=o.hue or None)
