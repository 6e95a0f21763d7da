"""llm.causal_lm: adapters, what checkpoints hold, and the refusals of bad inputs
(each one line naming the key, before any training)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from privet import CheckpointError, ConfigError, OptionValueError
from safetensors.torch import load_file

import checkpoints


def _make(host, path, **options):
    return host.make("model", "llm.causal_lm", {"path": str(path), **options})


def test_lora_trains_only_the_adapter_and_checkpoints_hold_only_it(host, ckpt):
    model = _make(host, ckpt("qwen2"), adapter={"kind": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]})
    torch.manual_seed(0)
    module = model.build()
    part = model.trainable_state_dict(module)
    assert part and all("lora_" in k for k in part)
    assert {k.split(".")[-4] for k in part} == {"q_proj", "v_proj"}
    total = sum(p.numel() for p in module.parameters())
    assert sum(t.numel() for t in part.values()) < total / 10
    # a fresh build (another seed: other adapter init) gets them back exactly
    with torch.no_grad():
        for tensor in part.values():
            tensor.add_(0.5)
    torch.manual_seed(1)
    again = model.build()
    model.load_trainable_state_dict(again, {k: v.detach().clone() for k, v in part.items()})
    for name, tensor in model.trainable_state_dict(again).items():
        assert torch.equal(tensor, part[name])
    with pytest.raises(CheckpointError, match="do not match"):
        model.load_trainable_state_dict(again, {"nope.weight": torch.zeros(1)})
    assert model.default_lr() == 2e-4


def test_dora_and_full_fine_tuning(host, ckpt):
    dora = _make(host, ckpt("llama"), adapter={"kind": "dora", "r": 2})
    assert any("lora_magnitude_vector" in k for k in dora.trainable_state_dict(dora.build()))
    full = _make(host, ckpt("llama"), adapter={"kind": "none"})
    module = full.build()
    assert set(full.trainable_state_dict(module)) == {n for n, _ in module.named_parameters()}
    assert full.default_lr() == 2e-5


def test_a_folder_without_config_json_is_refused(host, ckpt, tmp_path):
    folder = tmp_path / "no-config"
    shutil.copytree(ckpt("qwen2"), folder)
    (folder / "config.json").unlink()
    with pytest.raises((ConfigError, OptionValueError), match="no config.json"):
        _make(host, folder)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(host, tmp_path):
    folder = checkpoints.make_qwen2(tmp_path / "small-vocab", vocab_size=300)
    model = _make(host, folder)
    with pytest.raises(ConfigError, match=r"tokenizer has \d+ tokens but the model's vocab_size is 300"):
        model.fit([])


def test_an_unknown_target_module_lists_the_models_layers(host, ckpt):
    model = _make(host, ckpt("deepseek_v3"), adapter={"target_modules": ["q_proj", "o_proj"]})
    with pytest.raises(ConfigError, match="adapter.target_modules") as err:
        model.build()
    message = str(err.value)
    assert "'q_proj'" in message and "q_a_proj" in message and "kv_b_proj" in message
    assert "\n" not in message


def test_quantize_on_cpu_is_a_one_line_error(host, ckpt):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises((ConfigError, OptionValueError), match="needs a CUDA GPU") as err:
        _make(host, ckpt("qwen2"), quantize="4bit")
    assert "\n" not in str(err.value)


def _bin_only(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_need_allow_pickle_and_load_tensors_only(host, ckpt, tmp_path):
    folder = _bin_only(ckpt("qwen2"), tmp_path / "bin")
    with pytest.raises((ConfigError, OptionValueError), match="allow_pickle"):
        _make(host, folder)
    module = _make(host, folder, allow_pickle=True, adapter={"kind": "none"}).build()
    reference = load_file(str(ckpt("qwen2") / "model.safetensors"))
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


class _Payload:
    """A pickle that runs code when loaded: it would write the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_code_running_pickle_is_refused_even_with_allow_pickle(host, ckpt, tmp_path):
    folder = _bin_only(ckpt("qwen2"), tmp_path / "evil")
    marker = tmp_path / "pwned"
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    weights["model.embed_tokens.weight"] = _Payload(marker)
    torch.save(weights, folder / "pytorch_model.bin")
    before = (folder / "pytorch_model.bin").read_bytes()
    model = _make(host, folder, allow_pickle=True, adapter={"kind": "none"})
    with pytest.raises(ConfigError, match="pytorch_model.bin: refused"):
        model.build()
    assert not marker.exists()
    assert (folder / "pytorch_model.bin").read_bytes() == before


def test_remote_code_checkpoints_are_refused(host, ckpt, tmp_path):
    import json

    folder = tmp_path / "remote"
    shutil.copytree(ckpt("qwen2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "acme_secret_arch"
    config["auto_map"] = {"AutoConfig": "configuration_acme.AcmeConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "configuration_acme.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    model = _make(host, folder)
    with pytest.raises(ConfigError, match="model.options.path"):
        model.fit([])
    assert not marker.exists()


def test_gradient_checkpointing_gives_the_same_gradients(host, ckpt):
    """Recomputing activations in the backward pass changes memory, not the adapter's gradient."""
    from conftest import reverse_chats

    grads = []
    for checkpointing in (False, True):
        model = _make(host, ckpt("llama"), gradient_checkpointing=checkpointing, max_length=128,
                      adapter={"kind": "lora", "r": 2, "dropout": 0.0})
        model.fit([])
        batch = model.collate([model.encode(e) for e in model.examples(reverse_chats(6), "train")])
        torch.manual_seed(0)
        module = model.build().train()
        calls = []
        module.get_base_model().model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
        out = model.step(module, batch)
        out.loss_sum.backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_bfloat16_base_weights_keep_float32_adapters(host, ckpt):
    from conftest import reverse_chats

    model = _make(host, ckpt("qwen2"), dtype="bfloat16", max_length=128)
    model.fit([])
    module = model.build()
    assert module.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    assert {t.dtype for t in model.trainable_state_dict(module).values()} == {torch.float32}
    batch = model.collate([model.encode(e) for e in model.examples(reverse_chats(4), "train")])
    out = model.step(module, batch)
    out.loss_sum.backward()
    assert torch.isfinite(out.loss_sum)


def test_a_malformed_eval_file_stops_the_run_before_training(host, ckpt, tmp_path):
    from privet import DataError

    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"prompt": "reverse cat", "answer": "tac"}\n{"prompt": "no answer"}\n', encoding="utf-8")
    model = _make(host, ckpt("qwen2"), eval={"file": str(qa)})
    with pytest.raises(DataError, match="qa.jsonl:2"):
        model.fit([])
