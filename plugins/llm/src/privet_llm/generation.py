"""Streaming text generation for ``llm.causal_lm`` (``privet generate`` / ``privet chat``).

A chat is rendered with :func:`privet_llm.chat.prompt_ids`, the very function training
uses for the tokens before an answer, so inference prompts are exactly what the model
learned to answer. Tokens are then sampled one at a time with the model's KV cache and
decoded incrementally: each piece of text is yielded as soon as it is settled (never half
of a multi-byte character), which is what lets ``privet chat`` show tokens as they come.
Sampling uses its own ``torch.Generator``, so a seed reproduces a reply exactly.

The same code serves a run (the PEFT-wrapped model trained by the run) and a merged
export (a plain ``transformers`` model loaded from ``RUN/export/merged``, which carries
its own tokenizer as ``module.privet_tokenizer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from privet import UsageError

from .chat import prompt_ids

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The attribute of a module loaded from an export that holds the export's tokenizer.
TOKENIZER_ATTR = "privet_tokenizer"


def encode_prompt(tokenizer: Any, prompt: str | Sequence[dict[str, str]], *, raw: bool = False,
                  chat_template: str | None = None) -> list[int]:
    """Token ids to generate after: a chat (or a text as one user turn) rendered with the
    chat template, or with ``raw`` (or no template at all) the text as a document starts."""
    if isinstance(prompt, str):
        if raw or not (chat_template or getattr(tokenizer, "chat_template", None)):
            return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        prompt = [{"role": "user", "content": prompt}]
    messages = list(prompt)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or message.get("role") not in ("system", "user", "assistant"):
            raise UsageError(f"chat message {i} must be {{'role': system|user|assistant, "
                             f"'content': text}}, not {message!r}")
    if not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise UsageError("this model's tokenizer has no chat template; set model.options."
                         "chat_template, or generate with --raw")
    return prompt_ids(tokenizer, messages, chat_template)


def stop_ids(tokenizer: Any, module: Any) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id}
    for config in (getattr(module, "generation_config", None), getattr(module, "config", None)):
        value = getattr(config, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {int(i) for i in ids if i is not None}


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """One id per row of ``logits`` (B, V): greedy at temperature 0, else top-k / nucleus sampling."""
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the most likely token always stays
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, ordered)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def sample_tokens(module: Any, ids: list[int], *, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  stop: Iterable[int] = ()) -> Iterator[int]:
    """New token ids after ``ids``, one at a time (KV cache); a stop id ends without being yielded."""
    import torch

    if not ids:
        raise UsageError("the prompt is empty and the tokenizer adds no start token; give a prompt")
    device = next(module.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    stop = set(stop)
    inputs = torch.tensor([ids], dtype=torch.long, device=device)
    past = None
    module.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = module(input_ids=inputs, cache=past, use_cache=True, logits_to_keep=1)
            past = out.cache
            next_id = sample_next(out.logits[:, -1, :], temperature=temperature, top_k=top_k,
                                  top_p=top_p, generator=generator)
            token = int(next_id[0, 0])
            if token in stop:
                return
            yield token
            inputs = next_id.view(1, 1)


def decode_stream(tokenizer: Any, tokens: Iterable[int]) -> Iterator[str]:
    """Text pieces of ``tokens`` as they come; joined they equal the decoded whole."""
    new: list[int] = []
    shown = ""
    for token in tokens:
        new.append(token)
        text = tokenizer.decode(new, skip_special_tokens=True)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            if len(text) > len(shown):
                yield text[len(shown):]
            shown = text
    text = tokenizer.decode(new, skip_special_tokens=True)
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown):]


def generate(module: Any, tokenizer: Any, prompt: str | Sequence[dict[str, str]], *,
             max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, raw: bool = False,
             chat_template: str | None = None) -> Iterator[str]:
    """The reply to ``prompt`` (a text or a chat), streamed piece by piece.

    A module loaded from an export brings its own tokenizer (``module.privet_tokenizer``),
    which then wins over ``tokenizer``: it is the one the export was written with.
    """
    tokenizer = getattr(module, TOKENIZER_ATTR, None) or tokenizer
    ids = encode_prompt(tokenizer, prompt, raw=raw, chat_template=chat_template)
    tokens = sample_tokens(module, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, stop=stop_ids(tokenizer, module))
    yield from decode_stream(tokenizer, tokens)
