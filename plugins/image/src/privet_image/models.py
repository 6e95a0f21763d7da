"""Image classifiers: a small CNN, torchvision ResNets and Vision Transformers.

All three share one record -> tensor path (:class:`ImageClassifier`): decode the bytes
(or take the image an augmenter already decoded), bring it to ``input_size`` with an
aspect policy, scale to [0, 1] and normalise with ``mean``/``std``. The label map is
learned in ``fit`` and saved as state, so exports and ``load_trained`` know the classes.
With ``decode: gpu`` on the source, ``encode`` ships the encoded bytes instead and
``step`` decodes, augments and normalises the batch on the device (``gpu_decode.py``).
torch is imported inside methods only (``privet plugins`` imports this module).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Optional

import attrs

import privet
from privet import OptionValueError, existing_path, positive

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: torchvision's ViT variants: (patch size, layers, heads, hidden dim, MLP dim).
VIT_VARIANTS = {
    "b_16": (16, 12, 12, 768, 3072),
    "b_32": (32, 12, 12, 768, 3072),
    "l_16": (16, 24, 16, 1024, 4096),
    "l_32": (32, 24, 16, 1024, 4096),
    "h_14": (14, 32, 16, 1280, 5120),
}


def _channels(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value not in (1, 3):
        raise OptionValueError(f"{attribute.name} must be 1 (grey) or 3 (RGB), got {value}",
                               attribute.name)


def _dropout(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise OptionValueError(f"{attribute.name} must be in [0, 1), got {value}", attribute.name)


@attrs.define(frozen=True)
class ImageModelOptions:
    """Options every image model has. ``mean``/``std`` default to ImageNet's for RGB."""

    input_size: int = attrs.field(default=224, validator=positive)
    channels: int = attrs.field(default=3, validator=_channels)
    mean: list[float] = attrs.field()
    std: list[float] = attrs.field()
    #: How ``encode`` brings an image to ``input_size``: centre ``crop`` after scaling the
    #: shorter side, ``pad`` after scaling the longer side, or ``stretch``.
    aspect: Literal["crop", "pad", "stretch"] = "crop"
    #: A local state dict (``torch.save`` or ``.safetensors``); never downloaded.
    pretrained_path: Optional[Path] = attrs.field(default=None, validator=existing_path)
    label_smoothing: float = attrs.field(default=0.0, validator=_dropout)
    image_field: str = "image"
    label_field: str = "label"

    @mean.default
    def _mean(self) -> list[float]:
        return list(IMAGENET_MEAN) if self.channels == 3 else [0.5] * self.channels

    @std.default
    def _std(self) -> list[float]:
        return list(IMAGENET_STD) if self.channels == 3 else [0.5] * self.channels

    def __attrs_post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise OptionValueError(f"mean and std need one value per channel ({self.channels}), "
                                   f"got {len(self.mean)} and {len(self.std)}", "mean")
        if any(s <= 0 for s in self.std):
            raise OptionValueError(f"std values must be positive, got {self.std}", "std")


class ImageClassifier(privet.Model):
    """Shared record handling, label map, loss and export inputs of the image models."""

    task = "classification"
    Options = ImageModelOptions
    #: State-dict prefixes a pretrained file may lack or shape differently (the head).
    head_prefixes: tuple[str, ...] = ()

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.classes: list[str] = []
        self._index: dict[str, int] = {}
        #: Set by ``decode: gpu`` (gpu_decode.configure): encode ships bytes, step decodes.
        self.device_decoder: Any = None

    # -- state learned from data -----------------------------------------------------------

    def fit(self, records: Iterable[privet.Record]) -> None:
        """Learn the label map (sorted class names) from the training split."""
        field = self.options.label_field
        labels = {str(r[field]) for r in records if r.get(field) is not None}
        if len(labels) < 2:
            raise privet.DataError(f"image classification needs at least 2 classes in the "
                                   f"training split, found {sorted(labels)} in field {field!r}")
        self._set_classes(sorted(labels))

    def _set_classes(self, classes: list[str]) -> None:
        self.classes = list(classes)
        self._index = {c: i for i, c in enumerate(self.classes)}

    def state_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_classes(list(state.get("classes", [])))

    # -- records -> tensors ------------------------------------------------------------------

    def preprocess(self, image: Any) -> torch.Tensor:
        """Bytes, PIL image, array or tensor -> normalised float tensor (C, S, S)."""
        import torch
        from torchvision.transforms.v2 import functional as F

        from .imaging import as_image, to_mode

        o = self.options
        mode = "L" if o.channels == 1 else "RGB"
        img = as_image(image, mode)
        if isinstance(img, torch.Tensor):
            img = self._fix_channels(img)
        else:
            img = to_mode(img, mode)
        img = self._fit_size(img, F)
        x = img if isinstance(img, torch.Tensor) else F.pil_to_tensor(img)
        x = F.to_dtype(x, torch.float32, scale=True)
        return F.normalize(x, o.mean, o.std)

    def _fix_channels(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.shape[0] == 4:  # RGBA tensor: drop alpha
            x = x[:3]
        if self.options.channels == 3 and x.shape[0] == 1:
            return x.expand(3, -1, -1).contiguous()
        if self.options.channels == 1 and x.shape[0] == 3:
            return F.rgb_to_grayscale(x)
        return x

    def _fit_size(self, img: Any, F: Any) -> Any:
        size = self.options.input_size
        h, w = F.get_size(img)
        if (h, w) == (size, size):
            return img
        aspect = self.options.aspect
        if aspect == "stretch":
            return F.resize(img, [size, size], antialias=True)
        scale = size / (min(h, w) if aspect == "crop" else max(h, w))
        target = [max(1, round(h * scale)), max(1, round(w * scale))]
        # centre_crop pads with zeros when the crop is larger: that is the ``pad`` policy.
        return F.center_crop(F.resize(img, target, antialias=True), [size, size])

    def encode(self, record: privet.Record) -> tuple[torch.Tensor, int]:
        if not self.classes:
            raise privet.TrainingError("the image model has no label map; fit() it on the "
                                       "training split (or load its state) first")
        o = self.options
        label = record.get(o.label_field)
        if label is None:
            raise privet.DropRecord("missing_label", f"no {o.label_field!r} value")
        index = self._index.get(str(label))
        if index is None:
            raise privet.DropRecord("unknown_label",
                                    f"class {label!r} is not in the training split")
        if o.image_field not in record:
            raise privet.DropRecord("missing_image", f"no {o.image_field!r} value")
        if self.device_decoder is not None:
            return self._encode_for_device(record), index
        return self.preprocess(record[o.image_field]), index

    def _encode_for_device(self, record: privet.Record) -> Any:
        """``decode: gpu``: the JPEG bytes (or Pillow's pixels for other files) and the
        augmenters' seeds; :meth:`step` decodes and augments them on the device."""
        from .gpu_decode import SEEDS_KEY, encode_image

        data = record[self.options.image_field]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise privet.DropRecord("undecodable_image", "decode: gpu needs the encoded bytes")
        mode = "L" if self.options.channels == 1 else "RGB"
        return encode_image(bytes(data), mode, tuple(record.get(SEEDS_KEY, ())))

    def use_device_decode(self, decoder: Any) -> None:
        """Ship encoded images and decode them in :meth:`step` with ``decoder``
        (a :class:`privet_image.gpu_decode.DeviceDecoder`)."""
        self.device_decoder = decoder

    def collate(self, items: list[Any]) -> Any:
        from .gpu_decode import DeviceImage, EncodedBatch

        if items and isinstance(items[0][0], DeviceImage):
            import torch

            return EncodedBatch([x for x, _ in items], torch.tensor([y for _, y in items]))
        return super().collate(items)

    def batch_size_of(self, batch: Any) -> int:
        from .gpu_decode import EncodedBatch

        return len(batch) if isinstance(batch, EncodedBatch) else super().batch_size_of(batch)

    def report(self) -> dict[str, Any]:
        """With ``decode: gpu``: images per decoder and CPU fallbacks by reason."""
        return {"decode": self.device_decoder.report()} if self.device_decoder else {}

    def _on_device(self, module: torch.nn.Module, batch: Any) -> Any:
        """An :class:`EncodedBatch` decoded, augmented and normalised on the module's device."""
        from .gpu_decode import EncodedBatch

        if not isinstance(batch, EncodedBatch):
            return batch
        import torch

        device = next(module.parameters()).device
        # preprocessing, not the model: full precision and no graph, as in the workers
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return self.device_decoder(batch, device)

    # -- the network -----------------------------------------------------------------------

    @abc.abstractmethod
    def network(self, num_classes: int) -> torch.nn.Module:
        """The freshly initialised ``nn.Module`` for ``num_classes`` classes."""

    def reinit_prefixes(self) -> tuple[str, ...]:
        """State-dict names a pretrained file may lack (the head; a replaced stem)."""
        return self.head_prefixes

    def adapt_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit a pretrained state dict to this model's options (e.g. grey input)."""
        return state

    def build(self) -> torch.nn.Module:
        if not self.classes:
            raise privet.TrainingError("the image model has no label map; fit() it on the "
                                       "training split (or load its state) before build()")
        module = self.network(len(self.classes))
        path = self.options.pretrained_path
        if path is not None:
            from .networks import load_pretrained

            self.reinitialised = load_pretrained(module, Path(path), reinit=self.reinit_prefixes(),
                                                 adapt=self.adapt_pretrained)
        return module

    def step(self, module: torch.nn.Module, batch: Any) -> privet.StepOutput:
        import torch.nn.functional as F

        x, y = self._on_device(module, batch)  # the engine moved tensors to the device
        logits = module(x)
        per_example = F.cross_entropy(logits.float(), y, reduction="none",
                                      label_smoothing=self.options.label_smoothing)
        return privet.StepOutput(per_example.sum(), y.numel(), logits.detach(), y,
                                 per_example=per_example)

    def example_inputs(self, batch: Any) -> tuple[Any, ...]:
        from .gpu_decode import EncodedBatch

        if isinstance(batch, EncodedBatch):  # the export at the end of a decode: gpu run
            import torch

            return (self.device_decoder(batch, torch.device("cpu"))[0],)
        return (batch[0],)

    # -- prediction (``privet predict``) ---------------------------------------------------

    def class_names(self) -> list[str] | None:
        return list(self.classes) or None

    def read_inputs(self, path: Any) -> Iterator[tuple[str, privet.Record | privet.BadRecord]]:
        """Image files to predict: one file, a folder of them, or a CSV/JSONL listing paths."""
        from .inputs import read_image_inputs

        yield from read_image_inputs(Path(path), self.options.image_field)

    def encode_inputs(self, record: privet.Record) -> tuple[torch.Tensor, int]:
        """Like :meth:`encode`, without a label (the target slot holds -1)."""
        field = self.options.image_field
        if field not in record:
            raise privet.DropRecord("missing_image", f"no {field!r} value")
        return self.preprocess(record[field]), -1

    def bundle_files(self, folder: Any) -> dict[str, str]:
        """``labels.json`` plus ``preprocessing.json``: what to do to pixels before the model."""
        import json

        files = super().bundle_files(folder)
        o = self.options
        spec = {"input_size": o.input_size, "channels": o.channels, "aspect": o.aspect,
                "scale": "divide uint8 pixels by 255", "mean": list(o.mean), "std": list(o.std),
                "layout": "NCHW", "colour": "L" if o.channels == 1 else "RGB"}
        (Path(folder) / "preprocessing.json").write_text(json.dumps(spec, indent=2),
                                                         encoding="utf-8")
        return {**files, "image": "preprocessing.json"}

    def input_names(self) -> list[str]:
        return ["image"]

    def output_names(self) -> list[str]:
        return ["logits"]


def _grey_stem(key: str, channels: int):
    """An ``adapt`` hook: sum an RGB stem's weights over colour for a grey input."""

    def adapt(state: dict[str, Any]) -> dict[str, Any]:
        w = state.get(key)
        if channels == 1 and w is not None and w.ndim == 4 and w.shape[1] == 3:
            state = {**state, key: w.sum(dim=1, keepdim=True)}
        return state

    return adapt


class Cnn(ImageClassifier):
    """A small VGG-style CNN for tiny inputs (28x28, 32x32); trains in seconds on a CPU."""

    head_prefixes = ("fc.",)

    @attrs.define(frozen=True)
    class Options(ImageModelOptions):
        input_size: int = attrs.field(default=32, validator=positive)
        widths: list[int] = attrs.field(factory=lambda: [32, 64, 128])
        norm: Literal["batch", "group", "none"] = "batch"
        groups: int = attrs.field(default=8, validator=positive)
        dropout: float = attrs.field(default=0.1, validator=_dropout)

        def __attrs_post_init__(self) -> None:
            ImageModelOptions.__attrs_post_init__(self)
            if not self.widths or any(w <= 0 for w in self.widths):
                raise OptionValueError(f"widths must be positive channel counts, got "
                                       f"{self.widths}", "widths")
            if self.input_size < 2 ** len(self.widths):
                raise OptionValueError(f"input_size {self.input_size} is too small for "
                                       f"{len(self.widths)} pooling stages "
                                       f"(needs >= {2 ** len(self.widths)})", "input_size")

    def default_lr(self) -> float | None:
        """AdamW at 3e-3: on the shapes set (32 px, 6 epochs) it reached 0.93 validation
        accuracy where 1e-3 reached 0.39 and 1e-2 0.50."""
        return 3e-3

    def network(self, num_classes: int) -> torch.nn.Module:
        from .networks import SmallCNN

        o = self.options
        return SmallCNN(num_classes, o.channels, o.widths, o.norm, o.groups, o.dropout)

    def adapt_pretrained(self, state: dict[str, Any]) -> dict[str, Any]:
        return _grey_stem("features.0.weight", self.options.channels)(state)


class ResNet(ImageClassifier):
    """torchvision ResNet 18/34/50/101; ``norm: group`` for small batches; local weights only."""

    head_prefixes = ("fc.",)

    @attrs.define(frozen=True)
    class Options(ImageModelOptions):
        depth: Literal[18, 34, 50, 101] = 18
        norm: Literal["batch", "group"] = "batch"
        groups: int = attrs.field(default=32, validator=positive)
        #: ``small``: a 3x3 stride-1 stem without max-pool, for 32x32-ish inputs.
        stem: Literal["imagenet", "small"] = "imagenet"

    def default_lr(self) -> float | None:
        """1e-3 from scratch (the usual AdamW rate for a ResNet); 1e-4 when fine-tuning
        local pretrained weights, which a larger rate would wash out."""
        return 1e-4 if self.options.pretrained_path is not None else 1e-3

    def network(self, num_classes: int) -> torch.nn.Module:
        from .networks import resnet

        o = self.options
        return resnet(o.depth, num_classes, o.channels, o.norm, o.groups, o.stem)

    def reinit_prefixes(self) -> tuple[str, ...]:
        return self.head_prefixes + (("conv1.",) if self.options.stem == "small" else ())

    def adapt_pretrained(self, state: dict[str, Any]) -> dict[str, Any]:
        return _grey_stem("conv1.weight", self.options.channels)(state)


class ViT(ImageClassifier):
    """torchvision Vision Transformer (b_16, b_32, l_16, l_32, h_14, or ``custom`` sizes).

    ``input_size`` must be a multiple of the patch size. Pretrained weights trained at
    another resolution get their position embeddings interpolated.
    """

    head_prefixes = ("heads.",)

    @attrs.define(frozen=True)
    class Options(ImageModelOptions):
        variant: Literal["b_16", "b_32", "l_16", "l_32", "h_14", "custom"] = "b_16"
        #: For ``variant: custom`` (all five), or to override one of a named variant.
        patch_size: Optional[int] = attrs.field(default=None, validator=positive)
        num_layers: Optional[int] = attrs.field(default=None, validator=positive)
        num_heads: Optional[int] = attrs.field(default=None, validator=positive)
        hidden_dim: Optional[int] = attrs.field(default=None, validator=positive)
        mlp_dim: Optional[int] = attrs.field(default=None, validator=positive)
        dropout: float = attrs.field(default=0.0, validator=_dropout)

        def __attrs_post_init__(self) -> None:
            ImageModelOptions.__attrs_post_init__(self)
            dims = self.dims()
            if None in dims:
                raise OptionValueError("variant custom needs patch_size, num_layers, num_heads, "
                                       "hidden_dim and mlp_dim", "variant")
            patch, _layers, heads, hidden, _mlp = dims
            if self.input_size % patch:
                raise OptionValueError(f"input_size {self.input_size} must be a multiple of the "
                                       f"patch size {patch}", "input_size")
            if hidden % heads:
                raise OptionValueError(f"hidden_dim {hidden} must be divisible by num_heads "
                                       f"{heads}", "hidden_dim")

        def dims(self) -> tuple:
            base = VIT_VARIANTS.get(self.variant, (None,) * 5)
            own = (self.patch_size, self.num_layers, self.num_heads, self.hidden_dim, self.mlp_dim)
            return tuple(o if o is not None else b for o, b in zip(own, base))

    def default_lr(self) -> float | None:
        """Transformers want a smaller rate than CNNs: 3e-4 from scratch, 5e-5 when
        fine-tuning local pretrained weights."""
        return 5e-5 if self.options.pretrained_path is not None else 3e-4

    def network(self, num_classes: int) -> torch.nn.Module:
        from .networks import vit

        o = self.options
        patch, layers, heads, hidden, mlp = o.dims()
        return vit(num_classes, o.input_size, o.channels, patch_size=patch, num_layers=layers,
                   num_heads=heads, hidden_dim=hidden, mlp_dim=mlp, dropout=o.dropout)

    def adapt_pretrained(self, state: dict[str, Any]) -> dict[str, Any]:
        from torchvision.models.vision_transformer import interpolate_embeddings

        o = self.options
        state = _grey_stem("conv_proj.weight", o.channels)(state)
        pos = state.get("encoder.pos_embedding")
        patch = o.dims()[0]
        if pos is not None and pos.shape[1] != (o.input_size // patch) ** 2 + 1:
            state = dict(interpolate_embeddings(o.input_size, patch, state))
        return state
