"""The engine's fp32 CPU loop is bit-identical to a plain hand-written PyTorch loop."""

from __future__ import annotations

from pathlib import Path

from engine_support import blobs_pipeline, checkpoints, fitted_mlp, prepared_table, read_weights


def _hand_loop(run_dir: Path, report: dict, *, seed: int, epochs: int, batch_size: int,
               lr: float, dropout: float) -> list[dict]:
    """Train like a tutorial would, on the engine's prepared examples and data order.

    Returns the weights after each epoch.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import default_collate

    from privet.data.loader import epoch_order

    table = prepared_table(report)  # the examples as the engine cached them
    model = fitted_mlp(run_dir, hidden=16, dropout=dropout)

    torch.manual_seed(seed)
    module = model.build()
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    after_epoch = []
    for epoch in range(epochs):
        rank, world = 0, 1
        order = epoch_order(len(table), seed, epoch)[rank::world]
        module.train()
        for start in range(0, len(order), batch_size):
            rows = table.rows(order[start:start + batch_size])
            x, y = default_collate([model.encode(r) for r in rows])
            loss = F.cross_entropy(module(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        after_epoch.append({k: v.detach().clone() for k, v in module.state_dict().items()})
    return after_epoch


def test_fp32_cpu_training_is_bit_identical_to_a_plain_pytorch_loop(run):
    import torch

    config = blobs_pipeline(epochs=3, optimizer={"lr": 0.01})
    config["model"]["options"]["dropout"] = 0.25  # the RNG stream must match too
    outcome = run(config)
    outcome.assert_success()
    report = outcome.report
    expected = _hand_loop(outcome.run_dir, report, seed=7, epochs=3, batch_size=16, lr=0.01,
                          dropout=0.25)

    final = read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")
    assert set(final) == set(expected[-1])
    for name, value in expected[-1].items():
        assert torch.equal(final[name], value), f"{name} differs from the plain loop"
    # the loop moved the weights: a run that trained nothing would not match either
    assert not torch.equal(expected[0]["0.weight"], expected[-1]["0.weight"])

    best_epoch = report["best"]["epoch"]
    best = read_weights(outcome.run_dir / "best" / "model.safetensors")
    for name, value in expected[best_epoch - 1].items():
        assert torch.equal(best[name], value), f"best/{name} is not the weights of epoch {best_epoch}"
    assert report["steps"] == 3 * -(-report["data"]["counts"]["train"] // 16)
