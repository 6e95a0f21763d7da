"""Opacus' ghost clipping (``privacy.grad_sample_mode: ghost``): per-example gradient
norms without per-example gradients.

Hooks mode stores every example's gradient of every layer (``batch x parameters``
floats) before clipping. Ghost clipping (Li et al. 2022, Bu et al. 2023) computes each
example's gradient norm from the layer's activations and output gradients in a first
backward pass, then backpropagates the per-example losses weighted by their clipping
factors in a second pass: the gradient of the clipped sum, with no per-example copy.
Opacus does both passes (``DPTensorFastGradientClipping``); this module hands it each
micro-batch's per-example losses (``StepOutput.per_example``) through the loop's
``TrainingObjects.backward`` and refuses, in one line, what ghost clipping cannot do.
"""

from __future__ import annotations

from typing import Any

import privet

PATH = "privacy.grad_sample_mode"


def check_no_tied_parameters(module: Any, model_name: str) -> None:
    """Refuse weight tying (a GPT's LM head sharing the token embedding): Opacus' ghost
    norms are per layer and cannot add two uses of one parameter, and it would only fail
    on the first forward, several frames deep. As in Opacus, only layers with a ghost norm
    formula count (DPLSTM's torch-named aliases of its cells' weights are no tying)."""
    from opacus.grad_sample import GradSampleHooksFastGradientClipping as Hooks

    owners: dict[int, list[tuple[str, Any]]] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        for pname, p in sub.named_parameters(recurse=False):
            if p.requires_grad:
                owners.setdefault(id(p), []).append((f"{name}.{pname}" if name else pname, type(sub)))
    for uses in owners.values():
        names = sorted({n for n, _ in uses})
        if len(names) > 1 and any(kind in Hooks.NORM_SAMPLERS for _, kind in uses):
            raise privet.ConfigError(
                f"model {model_name!r} uses one parameter in several layers ({' = '.join(names)}), "
                f"which Opacus' ghost clipping cannot clip; untie it (text.gpt: model.options."
                f"tie_embeddings: false) or use grad_sample_mode: hooks", path=PATH)


def contiguous_embedding_inputs(module: Any) -> None:
    """Make every ``nn.Embedding``'s input contiguous before it runs: Opacus' ghost norm
    for embeddings ``view``s the ids, which fails on positions ``expand``ed to one row per
    example (the text transformer's). Same values; only a copy of the ids is made."""
    import torch

    def contiguous(_layer: Any, args: tuple) -> tuple:
        return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)

    for sub in module.modules():
        if isinstance(sub, torch.nn.Embedding):
            sub.register_forward_pre_hook(contiguous)


class GhostBackward:
    """The loop's ``backward`` for ghost clipping: Opacus' two passes over the
    micro-batch's per-example losses (summed, as the loop's ``sum_loss`` wants; the
    optimizer then divides by the expected batch size)."""

    def __init__(self, hooks: Any, optimizer: Any, model_name: str) -> None:
        self.hooks = hooks
        self.optimizer = optimizer
        self.model_name = model_name

    def __call__(self, out: Any) -> None:
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        per_example = out.per_example
        if per_example is None:
            raise privet.ConfigError(
                f"model {self.model_name!r} returns no per-example losses (StepOutput.per_example), "
                f"which ghost clipping needs; use grad_sample_mode: hooks", path=PATH)
        DPTensorFastGradientClipping(self.hooks, self.optimizer, per_example,
                                     loss_reduction="sum").backward()


__all__ = ["GhostBackward", "check_no_tied_parameters", "contiguous_embedding_inputs"]
