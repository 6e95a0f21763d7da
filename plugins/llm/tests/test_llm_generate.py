"""``privet generate`` and ``privet chat`` on LLM runs and on their merged exports.

Generation is a model capability (``Model.generate``) that the core commands call; for
``llm.causal_lm`` it renders prompts with the training code's own renderer and streams
the decoded tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from .test_llm_export import train_run

PROMPT = "reverse cat"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A trained Qwen2 LoRA run with its merged export, shared by this module's tests."""
    return train_run(tmp_path_factory.mktemp("llm-generate"), "qwen2", epochs=3,
                     export=["merged"])


@pytest.fixture(scope="module")
def trained(run: tuple[Any, Path]) -> tuple[Any, Any]:
    from privet import load_trained

    host, run_dir = run
    return load_trained(run_dir, host)


def invoke(*args: str, stdin: str | None = None) -> Any:
    """The ``privet`` launcher in-process (only the llm plugin), as a user would call it."""
    from click.testing import CliRunner
    from privet.cli import cli

    result = CliRunner().invoke(cli, list(args), input=stdin, env={"PRIVET_LOAD_PLUGINS": "llm"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def reply(model: Any, module: Any, prompt: Any, **options: Any) -> str:
    return "".join(model.generate(module, prompt, temperature=0, max_new_tokens=12, **options))


def test_the_prompt_is_rendered_by_the_code_that_renders_training_chats(trained):
    from privet_llm.chat import ChatEncoder
    from privet_llm.generation import encode_prompt

    model, _module = trained
    tok = model.tokenizer
    chat = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "tac"}]
    ids, learned = ChatEncoder(tok).chat(chat)
    prompt = encode_prompt(tok, PROMPT)
    # the tokens before the first learned token are exactly the generation prompt
    assert ids[:learned.index(True)] == prompt
    assert tok.decode(prompt).endswith("<｜Assistant｜><think>\n")  # R1's generation prompt
    assert encode_prompt(tok, PROMPT, raw=True) == list(tok(PROMPT)["input_ids"])


def test_pieces_stream_the_decoded_tokens_and_sampling_is_reproducible(trained):
    from privet_llm.generation import encode_prompt, sample_tokens, stop_ids

    model, module = trained
    tok = model.tokenizer
    pieces = list(model.generate(module, PROMPT, temperature=0, max_new_tokens=12))
    tokens = list(sample_tokens(module, encode_prompt(tok, PROMPT), max_new_tokens=12,
                                temperature=0, stop=stop_ids(tok, module)))
    assert "".join(pieces) == tok.decode(tokens, skip_special_tokens=True)
    assert len(tokens) <= 12
    one = "".join(model.generate(module, PROMPT, temperature=1.5, seed=3, max_new_tokens=12))
    assert one == "".join(model.generate(module, PROMPT, temperature=1.5, seed=3, max_new_tokens=12))
    # a nucleus that holds only the most likely token is greedy decoding
    assert reply(model, module, PROMPT) == "".join(
        model.generate(module, PROMPT, temperature=1.0, top_p=1e-6, seed=5, max_new_tokens=12))


def test_generation_stops_at_the_end_of_sequence_token(trained):
    from privet_llm.generation import encode_prompt, sample_tokens, stop_ids

    model, module = trained
    tok = model.tokenizer
    ids = encode_prompt(tok, PROMPT)
    first = next(sample_tokens(module, ids, max_new_tokens=1, temperature=0))
    assert tok.eos_token_id in stop_ids(tok, module)
    # the first greedy token made a stop token: nothing is generated
    assert list(sample_tokens(module, ids, max_new_tokens=5, temperature=0, stop={first})) == []


def test_a_run_answers_what_it_learned_and_stops_at_its_learned_end_token(tmp_path):
    from privet import load_trained

    host, run_dir = train_run(tmp_path, "qwen2", epochs=6, chats=[(PROMPT, "tac")])
    model, module = load_trained(run_dir, host)
    # exactly the answer: the adapter is applied, and the learned EOS ends the reply
    assert reply(model, module, PROMPT) == "tac"


def test_privet_generate_on_a_run_and_on_its_merged_export_give_the_same_text(run, trained):
    host, run_dir = run
    model, module = trained
    expected = reply(model, module, PROMPT)
    options = ("--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "12")
    assert invoke("generate", str(run_dir), *options).output == expected + "\n"
    for target in (run_dir / "export", run_dir / "export" / "merged"):
        assert invoke("generate", str(target), *options).output == expected + "\n"


def test_privet_chat_streams_replies_keeps_the_history_and_resets(run, trained):
    host, run_dir = run
    model, module = trained
    first = reply(model, module, [{"role": "user", "content": PROMPT}])
    history = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first},
               {"role": "user", "content": "reverse dog"}]
    second = reply(model, module, history)
    fresh = reply(model, module, [{"role": "user", "content": "reverse dog"}])
    stdin = f"{PROMPT}\nreverse dog\n/reset\nreverse dog\n/exit\nreverse sun\n"
    for target in (run_dir, run_dir / "export" / "merged"):
        out = invoke("chat", str(target), "--temperature", "0", "--max-new-tokens", "12",
                     stdin=stdin).output
        # /exit ends the chat: the last line is never answered
        assert out.splitlines() == [first, second, fresh]


def test_generate_refuses_an_adapter_artifact_and_a_non_generating_model_with_one_line(run, tmp_path):
    from privet import ExportError, UsageError
    from privet.commands.generate import load_for_generation
    from privet.export.bundle import export_run

    host, run_dir = run
    export_run(run_dir, host=host, formats=["merged", "adapter"], log=None)
    with pytest.raises(ExportError, match="an adapter needs its base model"):
        load_for_generation(run_dir / "export", host, artifact="adapter")
    model, module = load_for_generation(run_dir / "export", host)  # the default: merged
    assert "".join(model.generate(module, PROMPT, temperature=0, max_new_tokens=4))
    from privet import Model

    with pytest.raises(UsageError, match="does not generate text"):
        Model.generate(model, module, PROMPT)
    with pytest.raises(UsageError, match="role"):
        list(model.generate(module, [{"role": "robot", "content": "x"}]))


def test_top_k_one_is_greedy_and_temperature_zero_ignores_the_seed(trained):
    from privet_llm.generation import sample_next

    logits = torch.tensor([[0.1, 2.0, 0.3, 1.9]])
    gen = torch.Generator().manual_seed(0)
    assert all(int(sample_next(logits, temperature=2.0, top_k=1, top_p=None, generator=gen)) == 1
               for _ in range(20))
    picks = {int(sample_next(logits, temperature=1.0, top_k=2, top_p=None, generator=gen))
             for _ in range(200)}
    assert picks == {1, 3}
    assert int(sample_next(logits, temperature=0, top_k=None, top_p=None, generator=None)) == 1
