"""The client's ``wrap_training``: it starts from the global weights and adds FedProx's term."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from privet.federate import exchange
from privet.federate.client import ClientHooks
from privet.storage import Storage
from privet.train.context import TrainingObjects


def objects_and_run():
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    run = SimpleNamespace(components=SimpleNamespace(model=None), device=torch.device("cpu"))
    return TrainingObjects(module=module, optimizer=opt, train_loader=None), run


def global_weights(tmp_path) -> tuple[Storage, dict[str, torch.Tensor]]:
    weights = {"weight": torch.tensor([[2.0, -1.0]]), "bias": torch.tensor([0.5])}
    storage = Storage(tmp_path)
    exchange.save_tensors(storage, exchange.GLOBAL, weights)
    return storage, weights


def test_the_hook_loads_the_global_weights_and_adds_the_proximal_term(tmp_path):
    storage, weights = global_weights(tmp_path)
    objects, run = objects_and_run()
    hooks = ClientHooks()
    hooks.active, hooks.global_file, hooks.mu = True, (storage, exchange.GLOBAL), 0.5
    hooks.wrap_training(run, objects)
    module = objects.module
    assert torch.equal(module.weight.detach(), weights["weight"])
    assert torch.equal(module.bias.detach(), weights["bias"])
    with torch.no_grad():
        module.weight.add_(1.0)  # local training moved it
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    objects.optimizer.step()  # only the term acts: back towards the global weights
    assert torch.allclose(module.weight.detach(), weights["weight"] + 1.0 - 0.1 * 0.5 * 1.0)


def test_without_mu_the_optimizer_is_untouched_and_an_inactive_hook_does_nothing(tmp_path):
    storage, _ = global_weights(tmp_path)
    objects, run = objects_and_run()
    before = objects.module.weight.detach().clone()
    hooks = ClientHooks()
    hooks.global_file = (storage, exchange.GLOBAL)
    hooks.wrap_training(run, objects)  # not active: another run in this process
    assert torch.equal(objects.module.weight.detach(), before)
    hooks.active = True
    hooks.wrap_training(run, objects)
    w = objects.module.weight.detach().clone()
    for p in objects.module.parameters():
        p.grad = torch.zeros_like(p)
    objects.optimizer.step()
    assert torch.equal(objects.module.weight.detach(), w)  # mu 0: a zero gradient moves nothing
