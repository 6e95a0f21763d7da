"""DP-SGD inside the engine: virtual steps, epsilon in TensorBoard, the budget stop, the
options refused in one line, and Poisson sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privet_dp.sampling import PoissonBatchSampler, plan_poisson


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "model.safetensors"))


def test_accumulated_micro_batches_are_one_poisson_batch(host, run_pipeline, write_table, mlp_pipeline, tmp_path):
    """Virtual steps: 2 x 16 accumulated is the same sample, clipping and noise as 1 x 32."""
    import torch

    write_table(300)
    privacy = {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 0.5,
               "randomness": "seeded"}
    one = run_pipeline(mlp_pipeline(privacy, batch_size=32), plugins=["timeseries"])
    cfg = mlp_pipeline(privacy, batch_size=16, accumulate=2)
    cfg["name"] = "accumulated"
    two = run_pipeline(cfg, plugins=["timeseries"])

    one.assert_success()
    two.assert_success()
    assert one.report["steps"] == two.report["steps"]
    assert one.report["privacy"]["sample_rate"] == two.report["privacy"]["sample_rate"]
    assert one.report["privacy"]["epsilon"] == two.report["privacy"]["epsilon"]
    a, b = _weights(one.run_dir), _weights(two.run_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_by_default_two_runs_with_one_seed_draw_different_noise(host, run_pipeline, write_table,
                                                                mlp_pipeline):
    """The noise and the Poisson draws do not follow from the pipeline's (plain) seed."""
    import torch

    write_table(200)
    privacy = {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 0.5}
    runs = []
    for name in ("first", "second"):
        cfg = mlp_pipeline(privacy, batch_size=32, epochs=1)
        cfg["name"] = name
        runs.append(run_pipeline(cfg, plugins=["timeseries"]))
        runs[-1].assert_success()
    a, b = _weights(runs[0].run_dir), _weights(runs[1].run_dir)
    assert any(not torch.equal(a[key], b[key]) for key in a)
    assert runs[0].report["privacy"]["randomness"] == "secret"


def test_epsilon_is_logged_to_tensorboard_every_log_interval(host, run_pipeline, write_table, mlp_pipeline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_table(300)
    out = run_pipeline(mlp_pipeline({"mechanism": "dp-sgd", "noise_multiplier": 1.0}, log_every_n_steps=3),
                       plugins=["timeseries"])
    out.assert_success()

    events = EventAccumulator(str(out.run_dir / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("privacy/epsilon")]
    steps = out.report["steps"]
    assert {s for s, _ in logged} >= set(range(3, steps + 1, 3)) | {steps}
    values = [v for _, v in sorted(logged)]
    assert values == sorted(values) and values[0] > 0  # spent epsilon only grows
    assert values[-1] == pytest.approx(out.report["privacy"]["epsilon"], rel=1e-6)


def test_training_stops_cleanly_at_the_budget(host, run_pipeline, write_table, mlp_pipeline):
    write_table(300)
    privacy = {"mechanism": "dp-sgd", "noise_multiplier": 1.2, "target_epsilon": 3.0}
    out = run_pipeline(mlp_pipeline(privacy, epochs=5), plugins=["timeseries"])

    out.assert_success()
    report, privacy_report = out.report, out.report["privacy"]
    assert report["status"] == "stopped_early"
    assert report["stop_reason"].startswith("privacy budget reached")
    assert privacy_report["steps"] == privacy_report["budget_steps"] == report["steps"]
    assert privacy_report["steps"] < privacy_report["planned_steps"]
    assert privacy_report["epsilon"] <= 3.0
    from privet_dp.accounting import epsilon_for

    one_more = epsilon_for("rdp", [(1.2, privacy_report["sample_rate"], report["steps"] + 1)], 1e-5)
    assert one_more > 3.0  # it stopped at the last step within the budget
    last = sorted((out.run_dir / "checkpoints").glob("step-*"))[-1]
    assert last.name == f"step-{report['steps']:08d}"  # and checkpointed there


def test_target_epsilon_alone_computes_the_noise_for_the_planned_steps(host, run_pipeline, write_table, mlp_pipeline):
    write_table(300)
    out = run_pipeline(mlp_pipeline({"mechanism": "dp-sgd", "target_epsilon": 2.0, "accountant": "prv"}),
                       plugins=["timeseries"])

    out.assert_success()
    p = out.report["privacy"]
    assert p["accountant"] == "prv" and out.report["status"] == "completed"
    assert p["steps"] == p["planned_steps"] and 1.95 < p["epsilon"] <= 2.0
    assert p["noise_multiplier"] > 0.5


@pytest.mark.parametrize(("privacy", "train", "key"), [
    ({"mechanism": "dp-sgd"}, {}, "privacy.target_epsilon"),
    ({"mechanism": "dp-sgd", "noise_multiplier": -1}, {}, "privacy.noise_multiplier"),
    ({"mechanism": "dp-sgd", "noise_multiplier": 1, "accountant": "gdp"}, {}, "privacy.accountant"),
    ({"mechanism": "dp-sgd", "noise_multiplier": 1, "delta": 0.05}, {}, "privacy.delta"),
    ({"mechanism": "dp-sgd", "noise_multiplier": 0.3, "target_epsilon": 0.5}, {}, "privacy.target_epsilon"),
    ({"mechanism": "dp-sgd", "noise_multiplier": 1}, {"precision": "fp16"}, "train.precision"),
    ({"mechanism": "dp-sgd", "noise_multiplier": 1}, {"clip_grad_norm": 1.0}, "train.clip_grad_norm"),
    ({"mechanism": "dp-sgd", "noise_multiplier": 1}, {"compile": True}, "train.compile"),
])
def test_what_dp_sgd_cannot_honour_is_one_line_naming_the_key(host, run_pipeline, write_table, mlp_pipeline,
                                                             privacy, train, key):
    import privet

    write_table(60)
    out = run_pipeline(mlp_pipeline(privacy, **train), plugins=["timeseries"])

    assert isinstance(out.error, privet.ConfigError), out.error
    assert key in str(out.error) and "\n" not in str(out.error)


# --- Poisson sampling ---------------------------------------------------------------------


def test_poisson_batches_are_a_pure_function_of_seed_epoch_and_step():
    rate, steps = plan_poisson(1000, batch_size=25, accumulate=2, world_size=1)
    assert rate == 0.05 and steps == 20
    sampler = PoissonBatchSampler(1000, rate, steps, 2, seed=3)
    sampler.set_epoch(1)
    batches = [b.indices for b in sampler]
    assert len(batches) == len(sampler) == 40
    sampler.set_epoch(1, start_batch=14)  # a resumed run continues with the same batches
    assert all(np.array_equal(a, b.indices) for a, b in zip(batches[14:], sampler, strict=True))
    sampler.set_epoch(2)
    assert not all(np.array_equal(a, b.indices) for a, b in zip(batches, sampler))
    # each step's two micro-batches are disjoint halves of one Poisson sample
    step = np.concatenate(batches[0:2])
    assert len(set(step.tolist())) == len(step) and abs(len(batches[0]) - len(batches[1])) <= 1


def test_poisson_sampling_takes_each_example_independently_at_the_rate():
    sampler = PoissonBatchSampler(2000, 0.05, 20, 1, seed=0)
    sizes = [len(sampler.step_sample(0, s)) for s in range(400)]
    assert np.mean(sizes) == pytest.approx(100, rel=0.03)  # E = q N
    assert np.var(sizes) == pytest.approx(2000 * 0.05 * 0.95, rel=0.25)  # Binomial, not fixed
    counts = np.bincount(np.concatenate([sampler.step_sample(0, s) for s in range(400)]), minlength=2000)
    assert counts.mean() == pytest.approx(20, rel=0.03) and counts.min() >= 5  # everyone drawn


def test_distributed_ranks_sample_disjoint_shares_at_the_same_rate():
    rate, steps = plan_poisson(1000, batch_size=10, accumulate=1, world_size=2)
    ranks = [PoissonBatchSampler(1000, rate, steps, 1, seed=1, rank=r, world_size=2) for r in (0, 1)]
    a, b = (set(s.step_sample(0, 0).tolist()) for s in ranks)
    assert not a & b and all(i % 2 == 0 for i in a) and all(i % 2 == 1 for i in b)
    assert rate == 0.02 and steps == 50


def test_report_and_manifest_name_every_privacy_parameter(host, run_pipeline, write_table, mlp_pipeline):
    write_table(200)
    out = run_pipeline(mlp_pipeline({"mechanism": "dp-sgd", "noise_multiplier": 1.2, "max_grad_norm": 0.8},
                                    epochs=1), plugins=["timeseries"])
    out.assert_success()
    p = json.loads((out.run_dir / "report.json").read_text())["privacy"]
    assert {"mechanism", "epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate",
            "steps", "accountant", "opacus_version", "rdp_conversion"} <= set(p)
    assert p["noise_multiplier"] == 1.2 and p["max_grad_norm"] == 0.8 and p["target_epsilon"] is None
    assert json.loads((out.run_dir / "manifest.json").read_text())["privacy"] == p
