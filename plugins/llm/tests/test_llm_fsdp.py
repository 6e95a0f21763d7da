"""``train.strategy: fsdp`` (FSDP2 ``fully_shard``) with a LoRA adapter on a tiny Qwen2, two
CPU processes over gloo: the loss curve of one process, sharded checkpoints that hold the
adapter (and its optimizer state) only, and a SIGKILLed run that resumes to the same
result."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ENGINE_PLUGINS, llm_pipeline, reverse_chats, write_jsonl, write_pipeline


def _report(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed", report
    return report


def _sharded_keys(step_dir: Path) -> set[str]:
    """The tensor names a DCP checkpoint folder holds (its metadata, read by Privet's safe reader)."""
    from privet.train.checkpoint import safe_dcp_reader

    metadata = safe_dcp_reader(str(step_dir / "sharded")).read_metadata()
    return set(metadata.state_dict_metadata)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process, as torchrun makes it, torn down afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _sharded_lora(path: Path, **adapter):
    """A LoRA model on ``path`` wrapped as ``train.strategy: fsdp`` wraps it, and its optimizer."""
    import torch
    from privet.train.distributed import DistEnv, wrap_module
    from privet_llm.model import AdapterOptions, CausalLM

    options = dict(r=4, alpha=8.0, dropout=0.0)
    options.update(adapter)
    model = CausalLM(CausalLM.Options(path=path, adapter=AdapterOptions(**options)))
    raw = model.build()
    # world_size only gates the wrapping; the process group is the real (one-process) one
    module = wrap_module(raw, "fsdp", DistEnv(world_size=2), torch.device("cpu"))
    return model, module, torch.optim.AdamW(module.parameters(), lr=1e-2)


def _local(tensors: dict) -> dict:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in tensors.items()}


def test_sharded_adapter_checkpoint_holds_and_restores_only_the_adapter(ckpt, tmp_path, one_process_group):
    import torch
    from privet import CheckpointError
    from privet.storage import Storage
    from privet.train.checkpoint import CheckpointManager, capture_rng
    from torch.distributed.fsdp import FSDPModule

    model, module, optimizer = _sharded_lora(ckpt("qwen2"))
    layers = [m for m in module.modules() if type(m).__name__.endswith("Qwen2DecoderLayer")]
    assert layers and all(isinstance(m, FSDPModule) for m in [module, *layers])  # one unit per layer
    module(input_ids=torch.tensor([[5, 6, 7, 8]]), use_cache=False).logits.square().mean().backward()
    optimizer.step()  # moves the adapter (lora_B starts at zero) and fills AdamW's state
    trained = _local(model.trainable_state_dict(module))
    base = {k: v for k, v in _local(dict(module.named_parameters())).items() if k not in trained}
    rng, plain = capture_rng()
    manager = CheckpointManager(Storage(tmp_path / "run"), model=model)
    path = manager.save_sharded(1, module, optimizer, {"rng": rng}, {"rng": plain, "loop": {}})
    keys = _sharded_keys(path)
    assert {k[len("model."):] for k in keys if k.startswith("model.")} == set(trained)
    assert all("lora_" in k for k in keys if k.startswith("optim.state."))

    fresh, fresh_module, fresh_optimizer = _sharded_lora(ckpt("qwen2"))
    CheckpointManager.load_sharded(path, fresh_module, fresh_optimizer)
    got = _local(dict(fresh_module.named_parameters()))
    assert all(got[k].equal(v) for k, v in trained.items())  # the adapter comes from the checkpoint
    assert all(got[k].equal(v) for k, v in base.items())  # the frozen rest from the base weights
    assert fresh_optimizer.state_dict()["state"], "AdamW's state was not restored"

    _other, other_module, other_optimizer = _sharded_lora(ckpt("qwen2"), target_modules=["q_proj"])
    with pytest.raises(CheckpointError, match="does not match this model's trainable weights"):
        CheckpointManager.load_sharded(path, other_module, other_optimizer)


@pytest.mark.slow
def test_two_process_fsdp_lora_run_has_the_loss_curve_of_one_process(privet_cli, ckpt, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(96, seed=5))
    config = llm_pipeline(ckpt("qwen2"), data)
    config["train"].update(epochs=2, batch_size=4, strategy="fsdp",
                           checkpoint={"every_n_steps": 4, "keep_last": 2})
    two = write_pipeline(tmp_path, config, "two.yaml")
    config["train"].update(batch_size=8, strategy="ddp")  # the same global batch in one process
    one = write_pipeline(tmp_path, config, "one.yaml")
    result = privet_cli("run", str(two), "--name", "two", "--nproc-per-node", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    result = privet_cli("run", str(one), "--name", "one")
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [_report(tmp_path / "runs" / n) for n in ("two", "one")]
    assert reports[0]["world_size"] == 2 and reports[0]["steps"] == reports[1]["steps"]
    for a, b in zip(reports[0]["history"], reports[1]["history"]):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
    # best/ holds the adapter only, equal to the one-process run's
    wa, wb = (load_file(str(tmp_path / "runs" / n / "best" / "model.safetensors")) for n in ("two", "one"))
    assert wa.keys() == wb.keys() and all("lora_" in k for k in wa)
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() < 1e-4, name
    # the sharded checkpoints hold the adapter and its optimizer state, not the frozen base
    steps = sorted((tmp_path / "runs" / "two" / "checkpoints").glob("step-*"))
    assert steps
    keys = _sharded_keys(steps[-1])
    model_keys = {k for k in keys if k.startswith("model.")}
    assert model_keys and all("lora_" in k for k in model_keys), sorted(model_keys)[:5]
    assert {k.split(".", 1)[1] for k in model_keys} == set(wa)
    assert any(k.startswith("optim.") for k in keys)
    assert all("lora_" in k for k in keys if k.startswith("optim.state."))


@pytest.mark.slow
def test_fsdp_lora_run_resumes_after_sigkill_to_bit_identical_adapter_weights(privet_cli, ckpt, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(96, seed=6))
    config = llm_pipeline(ckpt("qwen2"), data, packing=False)
    config["model"]["options"]["adapter"]["dropout"] = 0.1  # each rank's RNG state must be restored too
    config["plugins"] = {"paths": [str(ENGINE_PLUGINS)]}
    config["train"].update(epochs=2, batch_size=4, strategy="fsdp",
                           checkpoint={"every_n_steps": 3, "keep_last": 2})
    pipeline = write_pipeline(tmp_path, config)
    two = ("--nproc-per-node", "2")
    reference = privet_cli("run", str(pipeline), "--name", "reference", *two, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    total = _report(tmp_path / "runs" / "reference")["steps"]
    kill_at = total // 2 + 1  # mid-run, a step or more after a checkpoint (every 3 steps)
    assert 3 < kill_at < total

    killed = privet_cli("run", str(pipeline), "--name", "killed", *two, timeout=600,
                        env={"PRIVET_TEST_KILL_AFTER_STEPS": str(kill_at)})
    assert killed.returncode != 0 and f"Signal {int(signal.SIGKILL)} (SIGKILL)" in killed.stderr, \
        killed.stderr[-2000:]
    run_dir = tmp_path / "runs" / "killed"
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.json").exists())
    assert saved and saved[-1] < f"step-{kill_at:08d}", saved  # resume starts from a sharded checkpoint
    resumed = privet_cli("run", str(pipeline), "--name", "killed", "--resume", str(run_dir), *two, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ref_dir = tmp_path / "runs" / "reference"
    ref, got = _report(ref_dir), _report(run_dir)
    assert got["steps"] == ref["steps"] and len(got["history"]) == len(ref["history"]) == 2
    for a, b in zip(got["history"], ref["history"]):
        assert a["val/loss"] == b["val/loss"]
    wa, wb = (load_file(str(d / "best" / "model.safetensors")) for d in (run_dir, ref_dir))
    assert wa.keys() == wb.keys() and all("lora_" in k for k in wa)
    for name in wa:
        assert wa[name].equal(wb[name]), (kill_at, name)
