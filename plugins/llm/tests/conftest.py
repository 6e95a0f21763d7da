"""Fixtures of the privet-llm tests: tiny random-weight checkpoints built here (Qwen2 in the
DeepSeek-R1-Distill shape, DeepSeek-V3 with MoE and MLA, Llama), chat corpora with a
learnable rule, and the real launcher. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for checkpoints (the suite runs with --import-mode=importlib)

import checkpoints  # noqa: E402

# The fixtures plugin authors get from privet.testing.
from privet.testing import privet_host, run_pipeline  # noqa: E402,F401
from privet_llm import plugin  # noqa: E402

#: tests/engine/plugins: the kit and the killer plugin (SIGKILL at a chosen step).
ENGINE_PLUGINS = HERE.parents[2] / "tests" / "engine" / "plugins"

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

WORDS = ("cat dog sun map red big hot top pen cup box fox art ant bed bus car day egg eye fan "
         "fig gem hat ice jam key kid leg man net owl pig rat sea tea toy van web yak zoo").split()


@pytest.fixture
def host(privet_host):  # noqa: F811 - the fixture imported above
    """``privet.testing``'s host with the llm plugin registered (as its entry point would)."""
    privet_host.register_plugin(plugin, "llm")
    return privet_host


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Callable[[str], Path]:
    """``ckpt("qwen2" | "deepseek_v3" | "llama")``: a tiny checkpoint folder, built once."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = checkpoints.BUILDERS[arch](tmp_path_factory.mktemp(arch))
        return built[arch]

    return get


def reverse_chats(n: int, seed: int = 0, system: bool = False) -> list[dict[str, Any]]:
    """Chats with a rule a model can learn: the assistant spells the user's word backwards."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(WORDS)
        messages = [{"role": "user", "content": f"reverse {word}"},
                    {"role": "assistant", "content": word[::-1]}]
        if system:
            messages.insert(0, {"role": "system", "content": "you reverse words"})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def llm_pipeline(model_path: Path, data: Path, **model_options: Any) -> dict[str, Any]:
    """A small chat-SFT pipeline on CPU (fp32, deterministic, silent)."""
    return {
        "name": "llm", "seed": 3, "runs_dir": "runs",
        "data": {"source": {"name": "llm.chat", "options": {"paths": [str(data)]}},
                 "split": {"method": "random", "val": 0.2}},
        "model": {"name": "llm.causal_lm",
                  "options": {"path": str(model_path), "max_length": 64,
                              "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
                              **model_options}},
        "train": {"epochs": 3, "batch_size": 8, "device": "cpu", "progress": "none",
                  "log_every_n_steps": 5, "deterministic": True,
                  "optimizer": {"name": "adamw", "lr": 3e-3}},
    }


@pytest.fixture
def privet_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """The real launcher with only the llm plugin, the text plugin where it is installed
    (tox's llm environment has the core and privet-llm alone), and ``plugins.paths``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    wanted = "llm,text" if importlib.util.find_spec("privet_text") else "llm"
    base.update(PRIVET_LOAD_PLUGINS=wanted, XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    script = Path(sys.executable).with_name("privet")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "privet"]

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*launcher, *args], env={**base, **(env or {})}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    return run


def write_pipeline(tmp_path: Path, config: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path
