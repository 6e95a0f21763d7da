"""Gradient accumulation: 4 micro-batches of 16 give the step of one batch of 64.

The optimizer is plain SGD so that the update is proportional to the gradient (Adam's
first step is nearly sign(g) and would hide a wrongly scaled gradient).
"""

from __future__ import annotations


from engine_support import blobs_pipeline, checkpoints, fitted_mlp, kit, prepared_table, read_weights

LR = 0.5


def _lm_pipeline(**train):
    return {
        "name": "lm",
        "seed": 3,
        "data": {"source": {"name": "kit.tokens", "options": {"n": 200}}},
        "model": "kit.lm",
        "train": {"device": "cpu", "progress": "none", **train},
    }


def _one_step(run, make, batch_size: int, accumulate: int):
    config = make(batch_size=batch_size, accumulate=accumulate, max_steps=1,
                  optimizer={"name": "sgd", "lr": LR})
    outcome = run(config)
    outcome.assert_success()
    assert outcome.report["steps"] == 1
    return outcome, read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")


def _hand_step(outcome, model, seed: int, *, micro: int, mean_of_means: bool) -> dict:
    """One SGD step by hand over the first 64 examples of epoch 0, in micro-batches.

    ``mean_of_means`` averages the per-micro-batch mean losses (the usual mistake);
    otherwise the summed loss is divided by the items of the whole window.
    """
    import torch

    from privet.data.loader import epoch_order

    table = prepared_table(outcome.report)
    order = epoch_order(len(table), seed, 0)[:64]
    torch.manual_seed(seed)
    module = model.build()
    outs = []
    for start in range(0, 64, micro):
        batch = model.collate([model.encode(r) for r in table.rows(order[start:start + micro])])
        outs.append(model.step(module, batch))
    if mean_of_means:
        loss = sum(o.loss_sum / o.count for o in outs) / len(outs)
    else:
        loss = sum(o.loss_sum for o in outs) / sum(o.count for o in outs)
    loss.backward()
    with torch.no_grad():
        return {k: (p - LR * p.grad).detach() for k, p in module.named_parameters()}


def test_four_accumulated_micro_batches_of_16_equal_one_batch_of_64(run):
    import torch

    big_run, big = _one_step(run, blobs_pipeline, 64, 1)
    small_run, accumulated = _one_step(run, blobs_pipeline, 16, 4)
    assert big_run.report["samples_seen"] == small_run.report["samples_seen"] == 64
    model = fitted_mlp(big_run.run_dir, hidden=16)
    expected = _hand_step(big_run, model, 7, micro=64, mean_of_means=False)
    for name, value in expected.items():
        assert torch.allclose(big[name], value, rtol=1e-5, atol=1e-7), name
        assert torch.allclose(accumulated[name], value, rtol=1e-5, atol=1e-7), name


def test_accumulating_padded_sequences_weighs_every_real_token_equally(run):
    import torch

    big_run, big = _one_step(run, _lm_pipeline, 64, 1)
    small_run, accumulated = _one_step(run, _lm_pipeline, 16, 4)
    model = kit.TinyLM()
    exact = _hand_step(small_run, model, 3, micro=16, mean_of_means=False)
    naive = _hand_step(small_run, model, 3, micro=16, mean_of_means=True)
    assert set(exact) == set(accumulated) == set(big)
    for name in exact:
        assert torch.allclose(accumulated[name], big[name], rtol=1e-5, atol=1e-7), name
        assert torch.allclose(accumulated[name], exact[name], rtol=1e-5, atol=1e-7), name
    # the micro-batches hold different numbers of real tokens, so averaging their mean
    # losses would give another step: the comparison above can tell the two apart
    assert not all(torch.allclose(naive[n], exact[n], rtol=1e-5, atol=1e-7) for n in exact)
