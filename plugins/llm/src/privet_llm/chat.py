"""Chat rendering and tokenisation, shared by training and inference.

The one rule: the tokens before an assistant answer in training are exactly the tokens
the model is prompted with at inference, ``render_prompt(tokenizer, history,
add_generation_prompt=True)`` tokenised as a whole. Rendering the full conversation with
the template instead (what many trainers do) silently disagrees for templates whose
generation prompt differs from how they render a past answer: DeepSeek-R1-Distill's opens
``<think>\\n`` for a new answer but renders history answers without it. The answer
follows as its own tokens, then the EOS token, which is learned so generation stops.
"""

from __future__ import annotations

from typing import Any, Sequence

Messages = Sequence[dict[str, str]]


def render_prompt(tokenizer: Any, messages: Messages, add_generation_prompt: bool = True,
                  chat_template: str | None = None) -> str:
    """``messages`` rendered by the chat template (the checkpoint's own unless given)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         chat_template=chat_template)


def prompt_ids(tokenizer: Any, messages: Messages, chat_template: str | None = None) -> list[int]:
    """Token ids of the inference prompt for ``messages`` (what generation starts from)."""
    text = render_prompt(tokenizer, messages, True, chat_template)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _strip_opening(content: str, generation_prompt: str, markers: Sequence[str]) -> str:
    """Drop from ``content`` what the generation prompt already ends with.

    A reasoning dataset's answer often starts ``<think>\\n...``; after an R1 prompt that
    already ends with ``<think>\\n`` the tag would otherwise be learned twice. Only an
    overlap that starts with one of the tokenizer's added tokens (``markers``) counts, so
    ordinary text that happens to share a character with the prompt is left alone.
    """
    for k in range(len(generation_prompt), 0, -1):
        tail = generation_prompt[-k:]
        if content.startswith(tail) and any(tail.startswith(m) for m in markers if m):
            return content[k:]
    return content


class ChatEncoder:
    """Turns chats and documents into token ids plus, per token, whether it is learned."""

    def __init__(self, tokenizer: Any, *, loss_on: str = "assistant", chat_template: str | None = None,
                 eos_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.loss_on = loss_on
        self.chat_template = chat_template
        self.eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
        #: Earlier assistant turns the template renders differently from a generation
        #: (their tokens are context, not targets); counted for the report.
        self.history_turns_not_learned = 0
        #: Added tokens (``<think>``, role markers): where a template's opening may start.
        self.markers = sorted(getattr(tokenizer, "get_added_vocab", dict)(), key=len, reverse=True)

    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        return render_prompt(self.tokenizer, messages, add_generation_prompt, self.chat_template)

    def chat(self, messages: Messages) -> tuple[list[int], list[bool]]:
        """Ids of the chat up to its last assistant answer, its EOS, and the learned mask."""
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prefix = self.render(messages[:last], True)
        plain = self.render(messages[:last], False)
        ids, learned = self._prefix(prefix, self._history_spans(messages, last, prefix))
        opening = prefix[len(plain):] if prefix.startswith(plain) else ""
        content = _strip_opening(messages[last]["content"], opening, self.markers)
        answer = list(self.tokenizer(content, add_special_tokens=False)["input_ids"]) + [self.eos_id]
        return ids + answer, learned + [True] * len(answer)

    def _prefix(self, prefix: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        """The prompt's ids (tokenised whole, as inference does) and which are targets."""
        everything = self.loss_on == "all"
        if not spans or not getattr(self.tokenizer, "is_fast", False):
            self.history_turns_not_learned += len(spans)  # a slow tokenizer gives no offsets
            ids = list(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
            return ids, [everything] * len(ids)
        enc = self.tokenizer(prefix, add_special_tokens=False, return_offsets_mapping=True)
        learned = [everything or (e > s and any(a <= s and e <= b for a, b in spans))
                   for s, e in enc["offset_mapping"]]
        return list(enc["input_ids"]), learned

    def _history_spans(self, messages: Messages, last: int, prefix: str) -> list[tuple[int, int]]:
        """Character spans of earlier assistant turns that are learned: those the template
        renders right after the generation prompt of their own history (as generated)."""
        if self.loss_on != "assistant":
            return []
        spans = []
        for k, message in enumerate(messages[:last]):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:k], True)
            through = self.render(messages[:k + 1], False)
            if through.startswith(before) and prefix.startswith(through) and len(through) > len(before):
                spans.append((len(before), len(through)))
            else:
                self.history_turns_not_learned += 1
        return spans

    def text(self, text: str) -> list[int]:
        """A document's ids: the tokenizer's own special tokens (BOS where it adds one), EOS last."""
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids


def shifted_labels(ids: Sequence[int], learned: Sequence[bool]) -> list[int]:
    """Next-token targets: ``labels[t] = ids[t + 1]`` where that token is learned, else -100.

    The last position predicts nothing (-100): packed examples never predict across their
    boundary.
    """
    out = [ids[t + 1] if learned[t + 1] else -100 for t in range(len(ids) - 1)]
    return out + [-100] if ids else out
