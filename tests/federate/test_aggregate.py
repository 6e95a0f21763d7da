"""FedAvg's weighted average and FedProx's proximal term, on values computed by hand."""

from __future__ import annotations

import pytest
import torch

from privet.federate.aggregate import (FederationError, add_proximal_term, client_weights,
                                       fedavg)


def test_client_weights_are_shares_of_the_examples():
    assert client_weights([100, 300]) == [0.25, 0.75]
    assert client_weights([0, 5]) == [0.0, 1.0]
    with pytest.raises(FederationError, match="no client trained"):
        client_weights([0, 0])


def test_fedavg_weights_each_client_by_its_examples():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.0)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(4.0)}
    out = fedavg([("a", a), ("b", b)], [100, 300])
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))  # 0.25*1 + 0.75*3, 0.25*2 + 0.75*6
    assert out["b"].item() == 3.0
    assert out["w"].dtype == torch.float32


def test_fedavg_of_equal_counts_is_the_plain_mean_and_keeps_the_dtype():
    ups = [(str(i), {"w": torch.full((2, 2), float(i), dtype=torch.float16)}) for i in range(3)]
    out = fedavg(ups, [7, 7, 7])
    assert out["w"].dtype == torch.float16
    assert torch.equal(out["w"], torch.full((2, 2), 1.0, dtype=torch.float16))


def test_fedavg_keeps_integer_counters_of_the_first_client():
    a = {"n": torch.tensor(5), "w": torch.tensor([0.0])}
    b = {"n": torch.tensor(9), "w": torch.tensor([1.0])}
    out = fedavg([("a", a), ("b", b)], [1, 1])
    assert out["n"].item() == 5 and out["w"].item() == 0.5


def test_fedavg_is_bit_identical_whatever_the_call():
    gen = torch.Generator().manual_seed(0)
    ups = [(str(i), {"w": torch.randn(64, generator=gen)}) for i in range(3)]
    assert torch.equal(fedavg(ups, [3, 5, 11])["w"], fedavg(ups, [3, 5, 11])["w"])


def test_an_update_of_another_shape_names_the_client_and_the_tensor():
    a = {"head.weight": torch.zeros(3, 4)}
    b = {"head.weight": torch.zeros(2, 4)}
    with pytest.raises(FederationError, match=r"client 'b' returned head.weight of shape \[2, 4\]"):
        fedavg([("a", a), ("b", b)], [1, 1])
    with pytest.raises(FederationError, match="other tensors"):
        fedavg([("a", a), ("b", {"other": torch.zeros(3, 4)})], [1, 1])


def test_proximal_term_pulls_the_step_towards_the_round_start():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    add_proximal_term(opt, [w], mu=0.5)  # anchor: [1, -2]
    with torch.no_grad():
        w.copy_(torch.tensor([3.0, -2.0]))  # moved away by local training
    w.grad = torch.zeros(2)  # no data gradient: only the term acts
    opt.step()
    # w - lr * mu * (w - anchor) = 3 - 0.1 * 0.5 * 2
    assert torch.allclose(w.detach(), torch.tensor([2.9, -2.0]))


def test_proximal_term_keeps_local_training_closer_to_the_global_weights():
    def train(mu: float) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        start = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        if mu:
            add_proximal_term(opt, list(model.parameters()), mu)
        x, y = torch.randn(64, 4), torch.randn(64, 1) * 3 + 5  # far from the start
        for _ in range(50):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return sum(float((p.detach() - s).norm()) for p, s in zip(model.parameters(), start))

    plain, prox = train(0.0), train(2.0)
    assert prox < 0.6 * plain
