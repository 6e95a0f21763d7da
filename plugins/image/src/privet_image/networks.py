"""The ``nn.Module``s behind the image models, and loading local pretrained weights.

Imported only when a model is built (it imports torch and torchvision). Options are
plain constructor arguments; nothing is ever downloaded: pretrained weights come from a
state dict file the user names.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

import privet

RESNET_DEPTHS = (18, 34, 50, 101)


def norm_layer(kind: str, groups: int = 32) -> Callable[[int], nn.Module]:
    """``batch`` -> BatchNorm2d; ``group`` -> GroupNorm (steady with batches of 2-8)."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda channels: nn.GroupNorm(math.gcd(groups, channels), channels)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise privet.ConfigError(f"unknown norm {kind!r}; use batch, group or none")


class SmallCNN(nn.Module):
    """A VGG-style CNN for small inputs (28x28, 32x32, 64x64).

    Each stage is two 3x3 conv-norm-ReLU layers and a 2x2 max-pool; global average
    pooling and a linear layer give the logits, so any input size works.
    """

    def __init__(self, num_classes: int, channels: int = 3, widths: Iterable[int] = (32, 64, 128),
                 norm: str = "batch", groups: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        make_norm = norm_layer(norm, groups)
        layers: list[nn.Module] = []
        cin = channels
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(cin, width, 3, padding=1, bias=norm == "none"),
                           make_norm(width), nn.ReLU(inplace=True)]
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


def resnet(depth: int, num_classes: int, channels: int = 3, norm: str = "batch",
           groups: int = 32, stem: str = "imagenet") -> nn.Module:
    """torchvision's ResNet; ``stem: small`` swaps the 7x7/2 conv + max-pool for a 3x3/1
    conv, which keeps the resolution of 32x32 inputs (the CIFAR variant)."""
    from torchvision.models import resnet as tv

    builders = {18: tv.resnet18, 34: tv.resnet34, 50: tv.resnet50, 101: tv.resnet101}
    if depth not in builders:
        raise privet.ConfigError(f"unknown ResNet depth {depth}; use one of {RESNET_DEPTHS}")
    model = builders[depth](weights=None, num_classes=num_classes,
                            norm_layer=norm_layer(norm, groups))
    if stem == "small":
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def vit(num_classes: int, image_size: int, channels: int = 3, *, patch_size: int,
        num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
        dropout: float = 0.0) -> nn.Module:
    """torchvision's VisionTransformer (key names match its pretrained state dicts)."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                              num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim,
                              dropout=dropout, num_classes=num_classes)
    if channels != 3:
        model.conv_proj = nn.Conv2d(channels, hidden_dim, patch_size, stride=patch_size)
    return model


# --- local pretrained weights ---------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``torch.save``d state dict.

    ``torch.load`` runs with ``weights_only=True``: a pickled file cannot execute code.
    A checkpoint wrapping the weights under ``state_dict``/``model`` is unwrapped, and a
    DDP ``module.`` prefix is removed.
    """
    where = f"model.options.pretrained_path: {path}"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise privet.ConfigError(f"{where}: cannot read weights ({type(err).__name__}: {err}); "
                                 f"save them with torch.save(module.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise privet.ConfigError(f"{where}: not a state dict (a mapping of names to tensors); "
                                 f"save one with torch.save(module.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(module: nn.Module, path: Path, *, reinit: Iterable[str] = (),
                    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
                    | None = None) -> list[str]:
    """Load ``path`` into ``module``; return the names left at their fresh initialisation.

    Names starting with a prefix in ``reinit`` (the classifier head, a replaced stem) may
    be missing or of another shape: the class count of the weights' original task need
    not match this one's. Any other missing, mismatched or extra tensor is an error: a
    half-loaded backbone (or weights of a deeper variant) trains silently badly.
    """
    state = read_state_dict(path)
    if adapt is not None:
        state = adapt(state)
    own = module.state_dict()
    reinit = tuple(reinit)
    loadable, skipped, bad = {}, [], []
    for name, tensor in own.items():
        theirs = state.get(name)
        if theirs is not None and theirs.shape == tensor.shape:
            loadable[name] = theirs
        elif reinit and name.startswith(reinit):
            skipped.append(name)
        else:
            why = ("missing" if theirs is None
                   else f"shape {tuple(theirs.shape)} != {tuple(tensor.shape)}")
            bad.append(f"{name} ({why})")
    bad += [f"{name} (not in this model)" for name in state
            if name not in own and not (reinit and name.startswith(reinit))]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise privet.ConfigError(
            f"model.options.pretrained_path: {path} does not fit this model: {shown}; "
            f"check that the file holds weights of the same architecture and options")
    module.load_state_dict(loadable, strict=False)
    return skipped
