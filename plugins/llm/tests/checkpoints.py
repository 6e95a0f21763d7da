"""Tiny random-weight Hugging Face checkpoints for the privet-llm tests (nothing downloaded).

Each builder writes into ``folder`` what a real local checkpoint holds: ``config.json``,
``model.safetensors`` and a fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``
with a chat template), trained here with the ``tokenizers`` library on a small corpus.
The models are configured the way transformers' own tests configure them (hidden 32,
two layers), so a training step takes milliseconds on a CPU. Plain functions, no
fixtures: any test module can import them.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

#: Special tokens of DeepSeek checkpoints (R1-Distill-Qwen, V2/V3 share them).
DS_BOS, DS_EOS, DS_PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
DS_USER, DS_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"

#: A DeepSeek-R1-Distill-style template: the system prompt first, history assistant turns
#: with their reasoning (before ``</think>``) stripped, and a generation prompt that opens
#: a ``<think>`` block. Rendering the full conversation for training therefore does NOT
#: start the answer the way inference does: the trap the template-agreement test covers.
R1_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}{% endfor %}"
    "{{ bos_token }}{{ ns.system }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set c = m['content'] %}"
    "{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

#: A Llama-3-style template (headers per turn, ``<|eot_id|>`` closes each turn).
LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_CORPUS_WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have "
                 "this from or had by word but what some we can out other were all there when up use "
                 "your how said an each she which do their time if will way about many then them write "
                 "would like so these her long make thing see him two has look more day could go come "
                 "did number sound no most people my over know water than call first who may down side "
                 "been now find any new work part take get place made live where after back little only "
                 "round man year came show every good me give our under name very through just form "
                 "sentence great think say help low line differ turn cause much mean before move right "
                 "boy old too same tell does set three want air well also play small end put home read "
                 "hand port large spell add even land here must big high such follow act why ask men "
                 "answer question user assistant hello thanks please reverse spelled backwards").split()


def _corpus() -> list[str]:
    """Words, letters and digits, so every string the tests use tokenizes to few pieces."""
    lines = [" ".join(_CORPUS_WORDS[i:i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    lines += [" ".join(string.ascii_lowercase), " ".join(string.digits), string.punctuation]
    return lines * 4


def train_tokenizer(specials: list[str], vocab_size: int = 400, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer (every byte encodable) with ``specials`` as added tokens,
    trained on ``corpus`` (default: a few hundred common English words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus or _corpus(), trainer=trainer)
    return tok


def save_tokenizer(folder: Path, specials: list[str], template: str, *, bos: str, eos: str,
                   pad: str, vocab_size: int = 400, corpus: list[str] | None = None) -> Any:
    """Train, wrap as ``PreTrainedTokenizerFast`` with the chat template, save; returns it."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(specials, vocab_size, corpus),
                                        bos_token=bos, eos_token=eos, pad_token=pad,
                                        chat_template=template)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def padded_vocab(n: int) -> int:
    """Embedding rows for a tokenizer of ``n`` tokens, rounded up to a multiple of 64 as real
    checkpoints do (transformers' Qwen2 tokenizer class adds an ``<|endoftext|>`` token when
    it loads, so the embedding must have room for more than the trained tokens)."""
    return -(-(n + 1) // 64) * 64


def _save_model(folder: Path, config: Any, seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _deepseek_tokenizer(folder: Path, template: str = R1_TEMPLATE, vocab: int = 400,
                        corpus: list[str] | None = None) -> Any:
    specials = [DS_BOS, DS_EOS, DS_PAD, DS_USER, DS_ASSISTANT, "<think>", "</think>"]
    return save_tokenizer(folder, specials, template, bos=DS_BOS, eos=DS_EOS, pad=DS_PAD,
                          vocab_size=vocab, corpus=corpus)


def make_qwen2(folder: str | Path, *, seed: int = 0, chat_template: str = R1_TEMPLATE,
               tokenizer_vocab: int = 400, corpus: list[str] | None = None, **overrides: Any) -> Path:
    """A tiny DeepSeek-R1-Distill-Qwen-shaped checkpoint (Qwen2 architecture, R1 template).

    ``overrides`` go to ``Qwen2Config`` (e.g. ``hidden_size=64, num_hidden_layers=3``);
    ``tokenizer_vocab`` and ``corpus`` size the tokenizer (a bigger vocabulary needs a
    bigger corpus: BPE stops when nothing is left to merge).
    """
    from transformers import Qwen2Config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _deepseek_tokenizer(folder, chat_template, tokenizer_vocab, corpus)
    settings: dict[str, Any] = dict(
        vocab_size=padded_vocab(len(tok)), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    settings.update(overrides)
    return _save_model(folder, Qwen2Config(**settings), seed)


def make_deepseek_v3(folder: str | Path, *, seed: int = 0, chat_template: str = R1_TEMPLATE,
                     **overrides: Any) -> Path:
    """A tiny DeepSeek-V3 checkpoint: MLA attention and a mixture of experts (1 dense layer,
    1 MoE layer with 8 routed experts, 2 per token, 1 shared), as transformers' tests build it."""
    from transformers import DeepseekV3Config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _deepseek_tokenizer(folder, chat_template)
    settings: dict[str, Any] = dict(
        vocab_size=padded_vocab(len(tok)), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, n_group=2, topk_group=1, num_attention_heads=4, num_key_value_heads=4,
        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
        head_dim=8, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    settings.update(overrides)
    return _save_model(folder, DeepseekV3Config(**settings), seed)


def make_llama(folder: str | Path, *, seed: int = 0, chat_template: str = LLAMA_TEMPLATE,
               **overrides: Any) -> Path:
    """A tiny Llama checkpoint with a Llama-3-style chat template (``<|eot_id|>`` as EOS)."""
    from transformers import LlamaConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = save_tokenizer(folder, specials, chat_template, bos="<|begin_of_text|>", eos="<|eot_id|>",
                         pad="<|pad|>")
    settings: dict[str, Any] = dict(
        vocab_size=padded_vocab(len(tok)), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    settings.update(overrides)
    return _save_model(folder, LlamaConfig(**settings), seed)


BUILDERS = {"qwen2": make_qwen2, "deepseek_v3": make_deepseek_v3, "llama": make_llama}
