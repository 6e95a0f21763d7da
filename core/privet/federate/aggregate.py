"""Aggregation of client updates: FedAvg weighted by examples, and FedProx's proximal term.

FedAvg (McMahan et al., 2017): the global weights are the average of the clients'
weights, each weighted by its number of training examples. FedProx (Li et al., 2020)
aggregates the same way; what differs is local training, where each client minimises
``loss + mu/2 * ||w - w_global||^2`` (:func:`add_proximal_term`).

Averages are computed in float64 in a fixed client order and cast back to each tensor's
dtype, so a resumed federation reaches bit-identical weights. Integer tensors (counters
such as BatchNorm's ``num_batches_tracked``) are not averaged: the first client's value
is kept.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import PrivetError


class FederationError(PrivetError):
    """Federated training cannot go on (a client failed, updates that do not fit)."""


def client_weights(counts: Sequence[int]) -> list[float]:
    """Each client's share of the average: its examples over all examples."""
    if any(n < 0 for n in counts):
        raise FederationError(f"example counts must be 0 or more, got {list(counts)}")
    total = sum(counts)
    if total == 0:
        raise FederationError("no client trained on any example; check the clients' data")
    return [n / total for n in counts]


def check_compatible(updates: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Every update holds the same tensors with the same shapes, or one error naming the
    client and tensor (a client whose model learnt another shape, such as fewer labels)."""
    first_name, first = updates[0]
    for name, tensors in updates[1:]:
        if set(tensors) != set(first):
            extra = sorted(set(tensors) ^ set(first))[:3]
            raise FederationError(f"client {name!r} returned other tensors than {first_name!r} "
                                  f"({', '.join(extra)}); every client must train the same model")
        for key, t in tensors.items():
            if tuple(t.shape) != tuple(first[key].shape):
                raise FederationError(
                    f"client {name!r} returned {key} of shape {list(t.shape)}, client "
                    f"{first_name!r} {list(first[key].shape)}: their models learnt different "
                    f"shapes from their data (e.g. a label missing at one client); give every "
                    f"client's data every label, or fix the shape in the model's options")


def fedavg(updates: Sequence[tuple[str, dict[str, Any]]], counts: Sequence[int]) -> dict[str, Any]:
    """The example-weighted average of the clients' tensors (``updates``: (client, tensors))."""
    import torch

    if not updates:
        raise FederationError("no client update to aggregate")
    if len(updates) != len(counts):
        raise FederationError(f"{len(updates)} updates but {len(counts)} example counts")
    check_compatible(updates)
    shares = client_weights(counts)
    out: dict[str, Any] = {}
    for key, first in updates[0][1].items():
        if not (first.is_floating_point() or first.is_complex()):
            out[key] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for (_name, tensors), share in zip(updates, shares):
            if share:
                acc += tensors[key].detach().to("cpu", torch.float64) * share
        out[key] = acc.to(first.dtype).contiguous()
    return out


def add_proximal_term(optimizer: Any, params: Sequence[Any], mu: float) -> Any:
    """FedProx: before each optimizer step, add ``mu * (w - w_global)`` to each gradient.

    That is the gradient of ``mu/2 * ||w - w_global||^2``, with ``w_global`` the weights
    the round started from (copied now). It is applied once per optimizer step, after
    accumulation and clipping, and after a DP optimizer added its noise (the term does
    not depend on data, so privacy is unchanged). Returns the hook's handle.
    """
    import torch

    anchors = [(p, p.detach().clone()) for p in params if p.requires_grad]

    def pre_step(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for p, anchor in anchors:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(p.detach() - anchor, alpha=mu)

    return optimizer.register_step_pre_hook(pre_step)
