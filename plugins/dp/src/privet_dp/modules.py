"""Making a model fit for per-example gradients, with Opacus' own validators and fixers.

BatchNorm mixes the examples of a batch (its statistics are shared), so no per-example
gradient exists: it is refused with one line saying what to use instead. ``nn.LSTM``
and ``nn.GRU`` are swapped for Opacus' ``DPLSTM``/``DPGRU`` (Opacus' fixers, which copy
the weights; their ``state_dict`` keys are those of the torch layers, so checkpoints,
``best/`` and exports read the same weights). The swap happens *in place* in the module
the engine holds, and the optimizer's parameter groups are pointed at the new
parameters by name.
"""

from __future__ import annotations

from typing import Any

import privet

#: Opacus' fixers this plugin applies: drop-in layers whose state_dict matches torch's
FIXABLE = ("LSTM", "GRU")


def check_no_batch_norm(module: Any, model_name: str) -> None:
    """One line naming the BatchNorm layers and the option that replaces them."""
    from torch.nn.modules.batchnorm import _BatchNorm

    found = [name for name, m in module.named_modules() if isinstance(m, _BatchNorm)]
    if found:
        shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        raise privet.ConfigError(
            f"model {model_name!r} has BatchNorm layers ({shown}), which mix the examples of a "
            f"batch so that no per-example gradient exists; set model.options.norm: group "
            f"(GroupNorm) for DP-SGD", path="privacy.mechanism")


def no_inplace_activations(module: Any) -> None:
    """Turn off ``inplace`` on activations (``nn.ReLU(inplace=True)``): Opacus' full
    backward hooks cannot see through an in-place change of a hooked layer's output. The
    outputs and the weights are the same; only a buffer is no longer reused."""
    for sub in module.modules():
        if getattr(sub, "inplace", False) is True:
            sub.inplace = False


def fix_in_place(module: Any, optimizer: Any) -> list[str]:
    """Swap each LSTM/GRU of ``module`` for Opacus' DP layer (weights copied); repoint the
    optimizer's parameters. Returns the swapped submodule names."""
    from opacus.validators import ModuleValidator

    before = dict(module.named_parameters())
    swapped = []
    for name, sub in list(module.named_modules()):
        if type(sub).__name__ not in FIXABLE or type(sub) not in ModuleValidator.FIXERS:
            continue
        if not sub.batch_first:
            raise privet.ConfigError(f"{name}: DP-SGD needs batch-first recurrent layers "
                                     f"(per-example gradients are taken over dimension 0)",
                                     path="privacy.mechanism")
        replacement = ModuleValidator.FIXERS[type(sub)](sub)
        replacement.to(next(sub.parameters()).device)
        handle = replacement._register_state_dict_hook(_torch_names_only)
        replacement._state_dict_hooks.move_to_end(handle.id, last=False)  # before Opacus' own
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, replacement)
        swapped.append(name)
    if swapped:
        _repoint(optimizer, before, dict(module.named_parameters()))
    return swapped


def _torch_names_only(module: Any, destination: dict[str, Any], prefix: str, _meta: Any) -> None:
    """Keep only the torch layer's names in the state_dict of a nested DP layer.

    Opacus' own hook compares unprefixed names and returns a filtered copy, which torch
    ignores for a submodule (the parent keeps its own dict): the internal names
    (``lstm.l0.ih.weight``) would then be saved too, and safetensors would keep one of
    the two names of each shared tensor. Removing them in place, before Opacus' hook
    runs, leaves the names ``nn.LSTM`` has (``lstm.weight_ih_l0``).
    """
    for internal in module.old_to_new:
        destination.pop(prefix + internal, None)


def _repoint(optimizer: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Replace the optimizer's old parameter objects by the new ones of the same name."""
    by_id = {id(p): after[name] for name, p in before.items() if name in after}
    missing = [name for name in before if name not in after]
    if missing:
        raise privet.TrainingError(f"parameters {missing[:3]} vanished when swapping in Opacus' "
                                   f"DP layers; this model cannot be trained with DP-SGD")
    for group in optimizer.param_groups:
        group["params"] = [by_id.get(id(p), p) for p in group["params"]]


class BatchFirstCheck:
    """On the first forward, refuse a trainable layer whose input does not have the
    batch as its first dimension (a positional embedding fed ``arange(T)``): Opacus would
    take its rows for examples and clip the wrong thing, or fail with a shape error
    several frames deep. One line names the layer; the hooks then remove themselves."""

    def __init__(self, module: Any) -> None:
        self.batch: int | None = None
        self.handles = [module.register_forward_pre_hook(self._root, with_kwargs=True),
                        module.register_forward_hook(lambda *_: self.remove())]
        for name, sub in module.named_modules():
            if sub is not module and any(p.requires_grad for p in sub.parameters(recurse=False)):
                self.handles.append(sub.register_forward_pre_hook(self._layer(name)))

    def _root(self, _module: Any, args: tuple, kwargs: dict) -> None:
        first = _first_tensor([*args, *kwargs.values()])
        self.batch = None if first is None or first.dim() == 0 else int(first.shape[0])

    def _layer(self, name: str) -> Any:
        def check(_module: Any, args: tuple) -> None:
            first = _first_tensor(list(args))
            if self.batch is None or first is None:
                return
            if first.dim() == 0 or int(first.shape[0]) != self.batch:
                self.remove()
                raise privet.ConfigError(
                    f"layer {name!r} of this model gets an input of shape {tuple(first.shape)} "
                    f"whose first dimension is not the batch ({self.batch}), so DP-SGD cannot "
                    f"give each example its own gradient; the model must feed it batched "
                    f"inputs (e.g. positions expanded to (batch, length))", path="privacy.mechanism")

        return check

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _first_tensor(values: list[Any]) -> Any:
    import torch

    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    return None


def check_validator(module: Any) -> None:
    """What else Opacus' ModuleValidator refuses, as one line (after the fixes above)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise privet.ConfigError(f"Opacus cannot compute per-example gradients for this model: "
                                 f"{errors[0]}", path="privacy.mechanism")


__all__ = ["BatchFirstCheck", "check_no_batch_norm", "check_validator", "fix_in_place", "no_inplace_activations"]
