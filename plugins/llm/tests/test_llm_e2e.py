"""``privet run`` end to end on tiny Qwen2, DeepSeek-V3 and Llama checkpoints: LoRA SFT
lowers the validation loss, a run killed with SIGKILL resumes to bit-identical adapter
weights, and bad inputs stop the launcher with one line and exit code 2."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import ENGINE_PLUGINS, llm_pipeline, reverse_chats, write_jsonl, write_pipeline


def _history(run_dir: Path) -> list[float]:
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed", report
    return [h["val/loss"] for h in report["history"]]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3", "llama"])
def test_lora_sft_through_privet_run_lowers_the_validation_loss(privet_cli, ckpt, tmp_path, arch):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(160, seed=1))
    pipeline = write_pipeline(tmp_path, llm_pipeline(ckpt(arch), data))
    result = privet_cli("run", str(pipeline), "--name", arch)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / arch
    losses = _history(run_dir)
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    # adapter runs keep the adapter only: every checkpoint tensor is a LoRA tensor
    best = load_file(str(run_dir / "best" / "model.safetensors"))
    assert best and all("lora_" in name for name in best)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["model"]["examples"]["train"]["target_tokens"] > 0


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.json").exists())


@pytest.mark.slow
def test_resume_after_sigkill_gives_bit_identical_adapter_weights(privet_cli, ckpt, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(160, seed=2))
    config = llm_pipeline(ckpt("qwen2"), data, packing=False)
    config["model"]["options"]["adapter"]["dropout"] = 0.1  # RNG state must be restored too
    config["plugins"] = {"paths": [str(ENGINE_PLUGINS)]}
    config["train"].update(batch_size=16, checkpoint={"every_n_steps": 3, "keep_last": 2})
    pipeline = write_pipeline(tmp_path, config)
    reference = privet_cli("run", str(pipeline), "--name", "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    total = json.loads((tmp_path / "runs" / "reference" / "report.json").read_text())["steps"]
    kill_at = random.Random().randint(4, total - 2)

    killed = privet_cli("run", str(pipeline), "--name", "killed",
                        env={"PRIVET_TEST_KILL_AFTER_STEPS": str(kill_at)})
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
    resumed = privet_cli("resume", str(tmp_path / "runs" / "killed"))
    assert resumed.returncode == 0, (kill_at, resumed.stderr[-3000:])

    ref_dir, run_dir = tmp_path / "runs" / "reference", tmp_path / "runs" / "killed"
    assert _history(run_dir) == _history(ref_dir), kill_at
    for where in (_checkpoints(run_dir)[-1].name, "best"):
        got = load_file(str(run_dir / "checkpoints" / where / "model.safetensors")) if where != "best" \
            else load_file(str(run_dir / "best" / "model.safetensors"))
        want = load_file(str((ref_dir / "checkpoints" / where if where != "best" else ref_dir / "best")
                             / "model.safetensors"))
        assert got.keys() == want.keys() and all("lora_" in k for k in got)
        for name in want:
            assert got[name].equal(want[name]), (kill_at, where, name)


def _fails_with_one_line(result, *needles: str) -> None:
    """Exit code 2, no traceback, one error line naming the key and what is wrong."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("privet: error")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.slow
def test_bad_inputs_stop_privet_run_with_one_line(privet_cli, ckpt, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(20))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    cases = [
        ({"path": str(empty)}, ["model.options.path", "no config.json"]),
        ({"quantize": "4bit"}, ["model.options.quantize", "CUDA"]),
        ({"adapter": {"target_modules": ["nonexistent_proj"]}},
         ["adapter.target_modules", "nonexistent_proj", "q_proj"]),
    ]
    for i, (options, needles) in enumerate(cases):
        config = llm_pipeline(ckpt("qwen2"), data)
        config["model"]["options"].update(options)
        pipeline = write_pipeline(tmp_path, config, f"bad{i}.yaml")
        _fails_with_one_line(privet_cli("run", str(pipeline)), *needles)


@pytest.mark.slow
def test_privet_init_llm_writes_a_starter_that_validates(privet_cli, tmp_path):
    result = privet_cli("init", "llm")
    assert result.returncode == 0, result.stderr
    written = sorted(p for p in tmp_path.rglob("*.yaml") if "xdg-cache" not in str(p))
    assert written, result.stdout
    config = yaml.safe_load(written[0].read_text())
    assert config["model"]["name"] == "llm.causal_lm" and config["data"]["source"]["name"] == "llm.chat"
    assert "# " in written[0].read_text()


def test_the_starter_pipeline_trains_once_its_paths_point_at_a_model_and_chats(host, run_pipeline, ckpt, tmp_path):
    """The starter as written (LoRA, bf16, packing, PII redaction, early stopping), with
    only the model folder and the data file replaced: it must run, not just parse."""
    pytest.importorskip("privet_text")
    from privet_llm import plugin

    config = yaml.safe_load(plugin.starter_pipeline("llm"))
    config["model"]["options"]["path"] = str(ckpt("qwen2"))
    config["data"]["source"]["options"]["paths"] = [str(write_jsonl(tmp_path / "c.jsonl", reverse_chats(60)))]
    config["train"].update(epochs=1, device="cpu", progress="none")
    outcome = run_pipeline(config, plugins=["text"])
    outcome.assert_success()
    assert outcome.report["model"]["examples"]["train"]["target_tokens"] > 0


@pytest.mark.slow
def test_two_process_ddp_lora_run_has_the_loss_curve_of_one_process(privet_cli, ckpt, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(96, seed=5))
    config = llm_pipeline(ckpt("qwen2"), data)
    config["train"].update(epochs=2, batch_size=4)
    two = write_pipeline(tmp_path, config, "two.yaml")
    config["train"]["batch_size"] = 8  # the same global batch in one process
    one = write_pipeline(tmp_path, config, "one.yaml")
    result = privet_cli("run", str(two), "--name", "two", "--nproc-per-node", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    result = privet_cli("run", str(one), "--name", "one")
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / "runs" / n / "report.json").read_text()) for n in ("two", "one")]
    assert reports[0]["world_size"] == 2 and reports[0]["steps"] == reports[1]["steps"]
    for a, b in zip(reports[0]["history"], reports[1]["history"]):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
    wa, wb = (load_file(str(tmp_path / "runs" / n / "best" / "model.safetensors")) for n in ("two", "one"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() < 1e-4, name


def test_full_fine_tuning_learns_a_chat_rule_to_90_percent_exact_match(run_pipeline, host, privet_cli,
                                                                        tmp_path):
    """adapter: none on a small Qwen2: the assistant answers each word spelled backwards,
    decoded greedily from the inference prompt until the model emits EOS; the run's own
    ``eval`` scores the same."""
    import checkpoints
    from privet import load_trained

    from conftest import WORDS

    folder = checkpoints.make_qwen2(tmp_path / "qwen2-64", hidden_size=64, intermediate_size=128)
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_chats(600, seed=0))
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"reverse {w}", "answer": w[::-1]} for w in WORDS])
    config = llm_pipeline(folder, data, adapter={"kind": "none"}, max_length=128,
                          eval={"file": str(qa), "max_new_tokens": 8})
    config["train"].update(epochs=25, batch_size=16, optimizer={"name": "adamw", "lr": 3e-3})
    outcome = run_pipeline(config)
    outcome.assert_success()
    model, module = load_trained(outcome.run_dir, host)
    # Model.generate is what `privet generate` streams (greedy at temperature 0)
    answers = {w: "".join(model.generate(module, f"reverse {w}", max_new_tokens=8, temperature=0))
               for w in WORDS}
    correct = sum(answers[w].strip() == w[::-1] for w in WORDS)
    assert correct >= 0.9 * len(WORDS), f"{correct}/{len(WORDS)}: {answers}"
    # and through the real command, for one word
    cli = privet_cli("generate", str(outcome.run_dir), "--prompt", "reverse fox",
                     "--temperature", "0", "--max-new-tokens", "8")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == answers["fox"].strip()
    # eval: {file} scored the same answers after training, into report.json (no texts kept)
    on_disk = json.loads((outcome.run_dir / "report.json").read_text())
    assert on_disk["eval"] == {"file": str(qa), "questions": len(WORDS), "correct": correct,
                               "exact_match": correct / len(WORDS)}
