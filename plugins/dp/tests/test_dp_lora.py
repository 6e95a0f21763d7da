"""DP-LoRA: privet-llm's LoRA adapters of a tiny random Qwen2 trained with DP-SGD.

Only the adapters train (the base weights are frozen), so Opacus computes per-example
gradients of the LoRA matrices alone; the checkpoint holds the adapters, as without DP.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("privet_llm")
pytest.importorskip("peft")

LLM_TESTS = Path(__file__).resolve().parents[2] / "llm" / "tests"


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    sys.path.insert(0, str(LLM_TESTS))
    try:
        import checkpoints  # privet-llm's tiny random checkpoints, built here
    finally:
        sys.path.remove(str(LLM_TESTS))
    return checkpoints.make_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_adapters_train_privately_on_a_tiny_qwen2(host, run_pipeline, qwen2, tmp_path, mode):
    """Both Opacus modes: per-example gradients (hooks) and ghost clipping's norms."""
    rng = random.Random(0)
    words = ["cat", "dog", "sun", "map", "red", "big", "hot", "pen", "cup", "box"]
    with open(tmp_path / "chats.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(64):
            word = rng.choice(words)
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"reverse {word}"},
                                              {"role": "assistant", "content": word[::-1]}]}) + "\n")
    out = run_pipeline({
        "name": "dp-lora", "seed": 3,
        "data": {"source": {"name": "llm.chat", "options": {"paths": ["chats.jsonl"]}},
                 "split": {"method": "random", "val": 0.2}},
        "model": {"name": "llm.causal_lm", "options": {
            "path": str(qwen2), "max_length": 32,
            "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0}}},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": "none",
                  "optimizer": {"name": "adamw", "lr": 3e-3}},
        "privacy": {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                    "delta": 1e-3, "randomness": "seeded", "grad_sample_mode": mode},
    }, plugins=["llm"])

    out.assert_success()
    privacy = out.report["privacy"]
    assert privacy["steps"] == out.report["steps"] > 0 and privacy["epsilon"] > 0
    assert privacy["grad_sample_mode"] == mode
    from safetensors.torch import load_file

    last = sorted((out.run_dir / "checkpoints").glob("step-*"))[-1]
    saved = load_file(str(last / "model.safetensors"))
    assert saved and all("lora_" in key for key in saved)  # the adapters, and only them
