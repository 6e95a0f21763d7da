"""``merged`` and ``adapter`` exports of LLM runs: what plain transformers and peft load back.

Each architecture (Qwen2 as in DeepSeek-R1-Distill, DeepSeek-V3 with MLA and experts,
Llama) is trained for a few LoRA steps with a high learning rate, so the adapter moves the
logits, then exported; the merged folder must give the adapter model's logits within 1e-4
when loaded by transformers alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .checkpoints import BUILDERS

CHATS = [("reverse cat", "tac"), ("reverse dog", "god"), ("reverse sun", "nus"),
         ("reverse ten", "net"), ("reverse map", "pam"), ("reverse bird", "drib")]


def write_chats(path: Path, n: int = 36, chats: list[tuple[str, str]] = CHATS) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (chats * n)[:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_run(folder: Path, arch: str = "qwen2", *, adapter: str = "lora", epochs: int = 1,
              lr: float = 3e-2, export: list[str] | None = None,
              chats: list[tuple[str, str]] = CHATS) -> tuple[Any, Path]:
    """(plugin host, run folder) of a tiny LLM run trained on ``chats``."""
    from privet.testing import make_test_host
    from privet.train.engine import run_from_config

    base = BUILDERS[arch](folder / "base")
    write_chats(folder / "chats.jsonl", chats=chats)
    adapter_options = {"kind": adapter, "r": 4, "alpha": 8, "dropout": 0.0}
    config: dict[str, Any] = {
        "name": f"llm-{arch}", "seed": 0, "runs_dir": str(folder / "runs"),
        "data": {"source": {"name": "llm.chat", "options": {"paths": ["chats.jsonl"]}},
                 "split": {"val": 0.2}},
        "model": {"name": "llm.causal_lm", "options": {
            "path": str(base), "adapter": adapter_options, "max_length": 64, "dtype": "float32"}},
        "train": {"epochs": epochs, "batch_size": 8, "optimizer": {"lr": lr}, "progress": "none"},
    }
    if export:
        config["export"] = {"formats": export}
    host = make_test_host()
    host.load_installed("llm")
    run_dir, report = run_from_config(config, host=host, base_dir=folder)
    assert report["status"] in ("completed", "stopped_early"), report
    return host, run_dir


def logits(module: Any, ids: list[list[int]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [module(input_ids=torch.tensor([row])).logits.float() for row in ids]


def val_prompts(run_dir: Path, n: int = 4) -> list[list[int]]:
    """Token ids of cached validation examples, as the exporter compares them."""
    from privet.data.arrow import ArrowTable
    from privet.storage import Storage

    cache = Storage(run_dir / "cache")
    meta = cache.read_json("meta.json")
    table = ArrowTable([str(cache.path(f)) for f in meta["example_files"]["val"]])
    return [list(r["input_ids"])[:48] for r in table.rows(list(range(min(n, len(table)))))]


@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3", "llama"])
def test_merged_export_reloads_in_plain_transformers_with_the_adapter_models_logits(arch, tmp_path):
    from privet import load_trained
    from privet.export.bundle import export_run
    from transformers import AutoModelForCausalLM

    host, run_dir = train_run(tmp_path, arch)
    model, adapter_model = load_trained(run_dir, host)
    report = export_run(run_dir, host=host, formats=["merged", "adapter"], log=None,
                        trained=(model, adapter_model))

    check = report["artifacts"]["merged"]["verification"]["validation"]
    assert report["artifacts"]["merged"]["verified"] and check["ok"]
    assert check["max_abs_diff"] <= 1e-4 and check["prompts"] >= 1  # the report states it
    merged_dir = run_dir / "export" / "merged"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged_dir.iterdir()}
    assert not list(merged_dir.glob("adapter_*")) and not list(merged_dir.glob("*.bin"))

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), local_files_only=True).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), local_files_only=True).eval()
    prompts = val_prompts(run_dir)
    for a, m, b in zip(logits(adapter_model, prompts), logits(merged, prompts), logits(base, prompts)):
        assert float((a - m).abs().max()) <= 1e-4
        assert float((a - b).abs().max()) > 1e-3  # the adapter changed the model: a real merge
    assert merged.config.use_cache  # plain generate() gets its KV cache back
    # the adapter model exported from memory is left as it was (merged, saved, unmerged)
    fresh = load_trained(run_dir, host)[1]
    for a, f in zip(logits(adapter_model, prompts), logits(fresh, prompts)):
        assert float((a - f).abs().max()) <= 1e-5


@pytest.mark.slow
def test_merged_folder_loads_without_privet_and_privet_export_cli_writes_it(tmp_path):
    host, run_dir = train_run(tmp_path, "qwen2")
    env = {**os.environ, "PRIVET_LOAD_PLUGINS": "llm", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "privet", "export", str(run_dir), "--format", "merged"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "merged" in result.stdout and "max |diff|" in result.stdout
    exported = json.loads((run_dir / "export" / "report.json").read_text())
    assert exported["artifacts"]["merged"]["verification"]["validation"]["max_abs_diff"] <= 1e-4

    probe = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"folder = {str(run_dir / 'export' / 'merged')!r}\n"
        "m = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)\n"
        "t = AutoTokenizer.from_pretrained(folder, local_files_only=True)\n"
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'reverse cat'}], "
        "add_generation_prompt=True, tokenize=False)\n"
        "out = m(input_ids=torch.tensor([t(ids, add_special_tokens=False)['input_ids']])).logits\n"
        "print(json.dumps({'privet': [k for k in sys.modules if k.startswith('privet')], "
        "'shape': list(out.shape)}))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**env, "PYTHONPATH": ""}, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    info = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert info["privet"] == [] and info["shape"][0] == 1


def test_adapter_folder_loads_with_peft_and_gives_the_runs_logits(tmp_path):
    from peft import PeftModel
    from privet import load_trained
    from privet.export.bundle import export_run
    from transformers import AutoModelForCausalLM

    host, run_dir = train_run(tmp_path, "qwen2")
    report = export_run(run_dir, host=host, formats=["adapter"], log=None)
    assert report["artifacts"]["adapter"]["verified"]
    folder = run_dir / "export" / "adapter"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    base_size = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert (folder / "adapter_model.safetensors").stat().st_size < base_size / 3  # small

    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    _model, trained = load_trained(run_dir, host)
    prompts = val_prompts(run_dir, 2)
    for a, b in zip(logits(trained, prompts), logits(peft_model, prompts)):
        assert float((a - b).abs().max()) <= 1e-5


def test_merging_into_4bit_weights_is_refused_with_the_reason_and_writes_no_model(tmp_path):
    from privet import ExportError, load_trained
    from privet.export.bundle import export_run

    host, run_dir = train_run(tmp_path, "qwen2")
    model, module = load_trained(run_dir, host)
    base = module.get_base_model()
    # what transformers sets on a model loaded with BitsAndBytesConfig(load_in_4bit=True)
    base.is_loaded_in_4bit = True
    base.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with pytest.raises(ExportError, match=r"refusing to merge.*4bit.*--format adapter"):
        export_run(run_dir, host=host, formats=["merged"], trained=(model, module), log=None)
    assert not (run_dir / "export" / "merged").exists()
    bundle = json.loads((run_dir / "export" / "bundle.json").read_text())
    assert bundle["artifacts"]["merged"]["verified"] is False and bundle["default_artifact"] is None


def test_adapter_format_of_a_full_fine_tuning_run_is_refused_and_merged_is_the_model(tmp_path):
    from privet import ExportError
    from privet.export.bundle import export_run

    host, run_dir = train_run(tmp_path, "qwen2", adapter="none", lr=1e-3)
    with pytest.raises(ExportError, match=r"no adapter to export; use --format merged"):
        export_run(run_dir, host=host, formats=["adapter"], log=None)
    report = export_run(run_dir, host=host, formats=["merged"], log=None)
    assert report["artifacts"]["merged"]["verification"]["validation"]["max_abs_diff"] <= 1e-4


def test_a_changed_file_in_the_merged_folder_is_caught_by_the_bundle_checksum(tmp_path):
    from privet import ExportError
    from privet.export.bundle import Bundle, export_run

    host, run_dir = train_run(tmp_path, "qwen2")
    export_run(run_dir, host=host, formats=["merged"], log=None)
    bundle = Bundle.open(run_dir / "export")
    assert bundle.load_module("merged", host) is not None
    config = run_dir / "export" / "merged" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act"', '"hidden_act" ', 1))
    with pytest.raises(ExportError, match="checksum mismatch"):
        Bundle.open(run_dir / "export").load_module("merged", host)


def _rehash(run_dir: Path) -> None:
    """Record the merged folder's current digest in bundle.json, as a forger of the bundle would."""
    from privet.export.bundle import sha256_of

    path = run_dir / "export" / "bundle.json"
    meta = json.loads(path.read_text())
    meta["artifacts"]["merged"]["sha256"] = sha256_of(run_dir / "export" / "merged")
    path.write_text(json.dumps(meta))


def test_a_forged_merged_export_runs_no_code_and_follows_no_symlink(tmp_path):
    from privet import ExportError
    from privet.export.bundle import Bundle, export_run

    host, run_dir = train_run(tmp_path, "qwen2")
    export_run(run_dir, host=host, formats=["merged"], log=None)
    merged = run_dir / "export" / "merged"
    marker = tmp_path / "pwned"
    # 1. remote code named by config.json (auto_map) and a pickle beside the safetensors
    (merged / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                    "from transformers import Qwen2ForCausalLM as EvilModel\n")
    config = json.loads((merged / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel", "AutoConfig": "evil.EvilModel"}
    (merged / "config.json").write_text(json.dumps(config))
    torch.save({"x": torch.zeros(1)}, merged / "pytorch_model.bin")
    _rehash(run_dir)
    module = Bundle.open(run_dir / "export").load_module("merged", host)
    # transformers' own Qwen2 code, weights from safetensors: the folder's code never ran
    assert type(module).__name__ == "Qwen2ForCausalLM" and not marker.exists()
    # 2. a file swapped for a symlink to something outside the bundle
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (merged / "tokenizer.json").unlink()
    (merged / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ExportError, match="symlink"):
        Bundle.open(run_dir / "export").load_module("merged", host)
