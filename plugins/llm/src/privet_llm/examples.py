"""From cleaned records to training examples: tokenise, truncate, window, pack.

An example in the cache is ``{"input_ids", "labels", "seq_lens"}``: the ids, the shifted
next-token targets (-100 where nothing is learned) and the length of each sequence it
holds. Packing puts several sequences in one row up to ``max_length``; each keeps its own
position ids (restarting at 0) and its last position predicts nothing, so no token
attends to or is predicted from another example (see :func:`position_ids`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator

from .chat import ChatEncoder, shifted_labels


class ExampleBuilder:
    """Streams records into examples and counts what it did (for ``report.json``)."""

    def __init__(self, encoder: ChatEncoder, *, max_length: int, overflow: str, packing: bool) -> None:
        self.encoder = encoder
        self.max_length = max_length
        self.overflow = overflow
        self.packing = packing
        self.counts: Counter[str] = Counter()

    def sequences(self, record: dict[str, Any]) -> Iterator[tuple[list[int], list[int]]]:
        """``(ids, labels)`` per sequence of one record (a long document gives several)."""
        if record.get("messages"):
            encoded = self._chat(record["messages"])
            if encoded is None:
                return
            ids, learned = encoded
            if len(ids) > self.max_length:
                if self.overflow == "drop":
                    self.counts["dropped_too_long"] += 1
                    return
                self.counts["truncated"] += 1
                ids, learned = ids[:self.max_length], learned[:self.max_length]
            labels = shifted_labels(ids, learned)
            if all(label == -100 for label in labels):
                self.counts["dropped_no_target_tokens"] += 1
                return
            yield ids, labels
        elif isinstance(record.get("text"), str):
            ids = self.encoder.text(record["text"])
            if len(ids) > self.max_length:
                self.counts["documents_windowed"] += 1
            for window in windows(ids, self.max_length):
                yield window, shifted_labels(window, [True] * len(window))
        else:
            self.counts["dropped_not_chat_or_text"] += 1

    def _chat(self, messages: Any) -> tuple[list[int], list[bool]] | None:
        """The encoded chat, or ``None`` (counted) for one the template cannot render or that
        another source let through without an assistant turn."""
        from jinja2.exceptions import TemplateError

        from .sources import check_messages

        problem = check_messages(messages)
        if problem is not None:
            self.counts[f"dropped_{problem[0]}"] += 1
            return None
        try:
            return self.encoder.chat(messages)
        except TemplateError:  # e.g. the template's raise_exception('roles must alternate')
            self.counts["dropped_template_error"] += 1
            return None

    def build(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Examples of one split: one per sequence, or packed rows when ``packing``."""
        pack: dict[str, list[int]] = {"input_ids": [], "labels": [], "seq_lens": []}
        for record in records:
            for ids, labels in self.sequences(record):
                self.counts["sequences"] += 1
                self.counts["tokens"] += len(ids)
                self.counts["target_tokens"] += sum(label != -100 for label in labels)
                if not self.packing:
                    self.counts["rows"] += 1
                    yield {"input_ids": ids, "labels": labels, "seq_lens": [len(ids)]}
                    continue
                if pack["seq_lens"] and len(pack["input_ids"]) + len(ids) > self.max_length:
                    self.counts["rows"] += 1
                    yield pack
                    pack = {"input_ids": [], "labels": [], "seq_lens": []}
                pack["input_ids"] += ids
                pack["labels"] += labels
                pack["seq_lens"].append(len(ids))
        if pack["seq_lens"]:
            self.counts["rows"] += 1
            yield pack


def windows(ids: list[int], size: int) -> Iterator[list[int]]:
    """Windows of at most ``size`` ids overlapping by one, so every id but the first is a
    target exactly once (a window's last id is the next window's first input)."""
    if len(ids) <= size:
        if len(ids) >= 2:
            yield ids
        return
    start = 0
    while start < len(ids) - 1:
        yield ids[start:start + size]
        start += size - 1


def position_ids(seq_lens: list[int], total: int) -> list[int]:
    """Positions restarting at 0 for each sequence; padding up to ``total`` is one more.

    transformers' causal masks read a restart as a new sequence (a block-diagonal mask:
    no attention across examples), and rotary embeddings see each sequence from 0, so a
    packed sequence computes exactly what it computes alone.
    """
    out: list[int] = []
    for n in seq_lens:
        out.extend(range(n))
    out.extend(range(total - len(out)))
    return out
