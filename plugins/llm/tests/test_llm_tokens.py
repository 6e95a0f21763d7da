"""Token-level correctness: the answer follows exactly the inference prompt, only answer
tokens (and EOS) carry loss, packing changes no example's loss, long chats are truncated
or dropped and counted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import reverse_chats
from privet_llm.attention import sequence_starts
from privet_llm.chat import prompt_ids, render_prompt

CHAT = [{"role": "system", "content": "you reverse words"},
        {"role": "user", "content": "reverse dog"},
        {"role": "assistant", "content": "god"}]


def _model(host, path, **options):
    model = host.make("model", "llm.causal_lm", {"path": str(path), **options})
    model.fit([])
    return model


def _examples(model, chats, split="train"):
    return list(model.examples([{"messages": m} for m in chats], split))


def test_training_prompt_equals_the_inference_prompt_for_an_r1_template(host, ckpt):
    model = _model(host, ckpt("qwen2"))
    tok = model.tokenizer
    ids, learned = model.encoder().chat(CHAT)
    prompt = prompt_ids(tok, CHAT[:-1])
    assert render_prompt(tok, CHAT[:-1]).endswith("<｜Assistant｜><think>\n")
    assert ids[:len(prompt)] == prompt
    assert ids[len(prompt):] == tok("god", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # what rendering the whole chat would train instead: an answer without the <think> opening
    naive = tok(render_prompt(tok, CHAT, add_generation_prompt=False), add_special_tokens=False)["input_ids"]
    assert naive[:len(prompt)] != prompt


def test_an_answer_that_opens_its_own_think_block_is_not_given_two(host, ckpt):
    model = _model(host, ckpt("qwen2"))
    tok = model.tokenizer
    chat = CHAT[:-1] + [{"role": "assistant", "content": "<think>\nbackwards</think>god"}]
    ids, _ = model.encoder().chat(chat)
    text = tok.decode(ids)
    assert text.count("<think>") == 1 and text.endswith("backwards</think>god<｜end▁of▁sentence｜>")


def test_only_assistant_tokens_and_eos_carry_loss(host, ckpt):
    model = _model(host, ckpt("qwen2"), packing=False)
    tok = model.tokenizer
    (example,) = _examples(model, [CHAT])
    targets = [t for t in example["labels"] if t != -100]
    assert targets == tok("god", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert example["labels"][-1] == -100  # the last position predicts nothing
    everything = _model(host, ckpt("qwen2"), packing=False, loss_on="all")
    (full,) = _examples(everything, [CHAT])
    assert full["labels"][:-1] == full["input_ids"][1:]


def test_earlier_turns_are_learned_only_when_the_template_renders_them_as_generated(host, ckpt):
    turns = [{"role": "user", "content": "reverse cat"}, {"role": "assistant", "content": "tac"},
             {"role": "user", "content": "reverse dog"}, {"role": "assistant", "content": "god"}]
    llama = _model(host, ckpt("llama"), packing=False)
    (example,) = _examples(llama, [turns])
    learned = llama.tokenizer.decode([t for t in example["labels"] if t != -100])
    assert learned == "tac<|eot_id|>god<|eot_id|>"
    # R1 renders history answers without the <think> opening its generation prompt adds:
    # training on them would teach the other format, so they are context only, and counted.
    qwen = _model(host, ckpt("qwen2"), packing=False)
    (example,) = _examples(qwen, [turns])
    assert qwen.tokenizer.decode([t for t in example["labels"] if t != -100]) == "god<｜end▁of▁sentence｜>"
    assert qwen.counts["train"]["history_turns_not_learned"] == 1


def _per_example_losses(module, example, spans=False):
    """Summed token loss of each sequence in one (packed or single) example; ``spans``: with
    per-sequence attention (``privet_packed``) instead of the block-diagonal mask."""
    model_in = torch.tensor([example["input_ids"]])
    positions = []
    for n in example["seq_lens"]:
        positions += list(range(n))
    extra = {}
    if spans:
        starts = torch.tensor(sequence_starts([example["seq_lens"]], len(positions)), dtype=torch.int32)
        extra = {"cu_seq_lens_q": starts, "cu_seq_lens_k": starts}
    logits = module(input_ids=model_in, position_ids=torch.tensor([positions]), use_cache=False,
                    **extra).logits
    losses = F.cross_entropy(logits[0].float(), torch.tensor(example["labels"]), ignore_index=-100,
                             reduction="none")
    return [chunk.sum().item() for chunk in losses.split(example["seq_lens"])]


@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3", "llama"])
def test_packed_examples_have_the_loss_they_have_alone(host, ckpt, arch):
    chats = [c["messages"] for c in reverse_chats(5, seed=4, system=True)]
    chats[1] = chats[1][:2] + [{"role": "assistant", "content": "a much longer answer than the others"}]
    packed_model = _model(host, ckpt(arch), max_length=256, adapter={"kind": "none"})
    (packed,) = _examples(packed_model, chats)
    assert len(packed["seq_lens"]) == 5
    single = _examples(_model(host, ckpt(arch), packing=False, adapter={"kind": "none"}), chats)
    torch.manual_seed(0)
    module = packed_model.build().eval()
    with torch.no_grad():
        together = _per_example_losses(module, packed)
        alone = [_per_example_losses(module, ex)[0] for ex in single]
        assert together == pytest.approx(alone, abs=1e-5, rel=0)
        # per-sequence attention (what training uses with packing) computes the same
        assert module.config._attn_implementation == "privet_packed"
        assert _per_example_losses(module, packed, spans=True) == pytest.approx(alone, abs=1e-5, rel=0)
        # the engine's step on a padded batch of both layouts gives the same total
        batch_packed = packed_model.collate([packed_model.encode(packed)])
        batch_single = packed_model.collate([packed_model.encode(ex) for ex in single])
        a, b = packed_model.step(module, batch_packed), packed_model.step(module, batch_single)
        assert int(a.count) == int(b.count) == sum(t != -100 for t in packed["labels"])
        assert a.loss_sum.item() == pytest.approx(b.loss_sum.item(), abs=1e-4)
        # the control: without restarting positions the examples see each other
        leaky = dict(packed, seq_lens=[len(packed["input_ids"])])
        assert abs(sum(_per_example_losses(module, leaky)) - sum(alone)) > 1e-3


def test_long_chats_are_truncated_or_dropped_and_counted(host, ckpt):
    long_chat = CHAT[:2] + [{"role": "assistant", "content": "word " * 80}]
    truncating = _model(host, ckpt("qwen2"), max_length=32, packing=False)
    examples = _examples(truncating, [long_chat, CHAT])
    assert [len(e["input_ids"]) for e in examples][0] == 32
    assert truncating.counts["train"]["truncated"] == 1
    dropping = _model(host, ckpt("qwen2"), max_length=32, packing=False, overflow="drop")
    examples = _examples(dropping, [long_chat, CHAT])
    assert len(examples) == 1 and dropping.counts["train"]["dropped_too_long"] == 1
    assert dropping.report()["examples"]["train"]["dropped_too_long"] == 1


def test_documents_are_windowed_with_every_token_a_target_once(host, ckpt):
    model = _model(host, ckpt("qwen2"), max_length=16, packing=False)
    text = "the answer is the question and the question is the answer " * 4
    ids = model.encoder().text(text)
    examples = list(model.examples([{"text": text}], "train"))
    assert ids[-1] == model.tokenizer.eos_token_id
    assert all(len(e["input_ids"]) <= 16 for e in examples)
    targets = [t for e in examples for t in e["labels"] if t != -100]
    assert targets == ids[1:]


def test_eos_is_learned_so_generation_stops_after_the_answer(host, ckpt):
    model = _model(host, ckpt("qwen2"), adapter={"kind": "none"}, packing=False)
    tok = model.tokenizer
    torch.manual_seed(0)
    module = model.build()
    batch = model.collate([model.encode(e) for e in _examples(model, [CHAT])])
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(40):
        out = model.step(module, batch)
        optimizer.zero_grad()
        (out.loss_sum / out.count).backward()
        optimizer.step()
    module.eval()
    ids = prompt_ids(tok, CHAT[:-1])
    new = []
    with torch.no_grad():
        for _ in range(10):
            logits = module(input_ids=torch.tensor([ids + new]), use_cache=False).logits
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == tok.eos_token_id:
                break
    assert new == tok("god", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_chats_the_template_refuses_are_dropped_and_counted(host, ckpt, tmp_path):
    import checkpoints

    strict = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
              "{{ raise_exception('system only first') }}{% endif %}{{ m['content'] }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '>' }}{% endif %}")
    folder = checkpoints.make_llama(tmp_path / "strict", chat_template=strict)
    model = _model(host, folder, packing=False)
    late_system = [CHAT[1], CHAT[0], CHAT[2]]
    no_answer = [CHAT[1]]
    examples = _examples(model, [late_system, CHAT, no_answer])
    assert len(examples) == 1
    assert model.counts["train"]["dropped_template_error"] == 1
    assert model.counts["train"]["dropped_no_assistant_turn"] == 1
