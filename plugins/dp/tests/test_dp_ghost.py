"""``grad_sample_mode: ghost``: Opacus' ghost clipping clips the same per-example
gradients as hooks mode, without storing them; what it cannot do is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

PRIVACY = {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 0.5, "randomness": "seeded"}


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "model.safetensors"))


def _run(run_pipeline, mlp_pipeline, mode: str, **train):
    cfg = mlp_pipeline({**PRIVACY, "grad_sample_mode": mode}, **train)
    cfg["name"] = f"{mode}-{train.get('accumulate', 1)}"
    out = run_pipeline(cfg, plugins=["timeseries"])
    out.assert_success()
    return out


@pytest.mark.parametrize("train", [{"batch_size": 32}, {"batch_size": 16, "accumulate": 2}],
                         ids=["one-batch", "accumulated"])
def test_ghost_clipping_reaches_the_weights_of_hooks_mode(host, run_pipeline, write_table, mlp_pipeline,
                                                          train):
    """Same Poisson draws, clipping and noise: ghost and hooks differ only in rounding.
    max_grad_norm 0.5 clips most examples here, so a wrong clip factor would show."""
    import torch

    write_table(300)
    hooks = _run(run_pipeline, mlp_pipeline, "hooks", **train)
    ghost = _run(run_pipeline, mlp_pipeline, "ghost", **train)

    assert ghost.report["privacy"]["grad_sample_mode"] == "ghost"
    assert hooks.report["privacy"]["grad_sample_mode"] == "hooks"
    assert ghost.report["steps"] == hooks.report["steps"] > 4
    assert ghost.report["privacy"]["steps"] == hooks.report["privacy"]["steps"]
    assert ghost.report["privacy"]["epsilon"] == hooks.report["privacy"]["epsilon"] > 0
    a, b = _weights(hooks.run_dir), _weights(ghost.run_dir)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5)
    assert ghost.report["final"]["val/accuracy"] > 0.7  # it trains


def test_a_model_without_per_example_losses_is_refused_in_one_line(host, run_pipeline, write_table,
                                                                   mlp_pipeline, monkeypatch):
    import privet
    from privet_timeseries.models.mlp import MLP

    step = MLP.step
    monkeypatch.setattr(MLP, "step", lambda self, module, batch: step(self, module, batch)._replace(
        per_example=None))
    write_table(100)
    out = run_pipeline(mlp_pipeline({**PRIVACY, "grad_sample_mode": "ghost"}), plugins=["timeseries"])

    assert isinstance(out.error, privet.ConfigError), out.error
    message = str(out.error)
    assert "privacy.grad_sample_mode" in message and "\n" not in message
    assert "timeseries.mlp" in message and "StepOutput.per_example" in message
    assert "grad_sample_mode: hooks" in message


def test_tied_weights_are_refused_before_training(host, run_pipeline, tmp_path):
    """A GPT's LM head shares the token embedding: ghost norms cannot add both uses."""
    import privet

    (tmp_path / "corpus.jsonl").write_text("".join(f'{{"text": "the cat sat on the mat {i}"}}\n'
                                                   for i in range(40)))
    config = {
        "name": "gpt", "seed": 0,
        "data": {"source": {"name": "text.jsonl", "options": {"paths": ["corpus.jsonl"]}},
                 "split": {"val": 0.2}},
        "model": {"name": "text.gpt", "options": {"layers": 1, "hidden": 16, "heads": 2,
                                                  "context_length": 8, "tokenizer": {"vocab_size": 60}}},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": "none"},
        "privacy": {**PRIVACY, "grad_sample_mode": "ghost"},
    }
    out = run_pipeline(config, plugins=["text"])

    assert isinstance(out.error, privet.ConfigError), out.error
    message = str(out.error)
    assert "privacy.grad_sample_mode" in message and "\n" not in message
    assert "tie_embeddings: false" in message


def _family(name: str, root: Path) -> tuple[dict, str]:
    """A tiny pipeline of each model family that has layers without a ghost norm formula
    (Conv2d + GroupNorm, DP-LSTM) or with one on sequences (a transformer's Linear)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))  # the model tests' pipelines, as they are
    try:
        from test_dp_models import image_pipeline, lstm_pipeline, text_pipeline, write_reviews
    finally:
        sys.path.remove(str(Path(__file__).parent))
    if name == "image.cnn":
        from privet_image.shapes import write_folder

        write_folder(root / "shapes", per_class=8, size=16, seed=1)
        return image_pipeline(root / "shapes", "group"), "image"
    if name == "text.transformer":
        write_reviews(root / "reviews.jsonl", 120)
        config = text_pipeline("transformer")
        config["train"]["epochs"] = 1
        return config, "text"
    return lstm_pipeline(root, 200), "timeseries"


@pytest.mark.parametrize("family", ["image.cnn", "text.transformer", "timeseries.lstm"])
def test_ghost_clipping_matches_hooks_on_every_model_family(host, run_pipeline, tmp_path, family):
    """Conv2d, GroupNorm and DP-LSTM take Opacus' fast-gradient-clipping fallback; the
    transformer's Linear layers its ghost norms over sequences: same weights as hooks."""
    import torch

    config, plugin = _family(family, tmp_path)
    runs = {}
    for mode in ("hooks", "ghost"):
        config = {**config, "name": mode, "privacy": {**PRIVACY, "grad_sample_mode": mode}}
        runs[mode] = run_pipeline(config, plugins=[plugin])
        runs[mode].assert_success()
    assert runs["ghost"].report["privacy"]["epsilon"] == runs["hooks"].report["privacy"]["epsilon"] > 0
    a, b = _weights(runs["hooks"].run_dir), _weights(runs["ghost"].run_dir)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
