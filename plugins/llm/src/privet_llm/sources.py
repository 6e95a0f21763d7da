"""LLM sources: chats for supervised fine-tuning, documents for continued pre-training.

``llm.chat`` emits ``{"messages": [{"role", "content"}, ...]}`` records whatever the file
holds (``messages`` lists, or ``prompt``/``completion`` pairs), so cleaners see one shape:
the text plugin's ``text.redact_pii`` rewrites every message's content before anything is
cached. ``llm.text`` emits ``{"text": ...}`` records. Both read through :mod:`privet.io`:
streamed, ``.gz`` transparently, a bad line dropped with its reason and ``file:line``, and
files that a folder's symlinks lead outside it never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import attrs
from privet import BadRecord, OptionValueError, Record, Source, existing_paths
from privet.io import Located, ListedFilesSource, iter_lines, read_jsonl

ROLES = ("system", "user", "assistant")


def _nonempty_paths(_instance: Any, attribute: Any, value: list[Path]) -> None:
    if not value:
        raise OptionValueError("paths: name at least one file or folder", attribute.name)


def check_messages(messages: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``messages`` cannot train a chat model, else ``None``.

    A chat needs a list of ``{"role", "content"}`` objects, roles among :data:`ROLES`,
    non-empty string contents, and at least one assistant turn (the only tokens that carry
    loss by default: a chat without one teaches nothing).
    """
    if not isinstance(messages, list) or not messages:
        return "no_messages", "'messages' must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return "bad_message", f"messages[{i}] is a {type(message).__name__}, not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return "unknown_role", f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}"
        if not isinstance(content, str) or not content.strip():
            return "empty_content", f"messages[{i}] ({role}) has no text content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant_turn", "no message has role 'assistant'"
    return None


def chat_record(row: dict[str, Any], where: str) -> Record | BadRecord:
    """A parsed JSONL object as a chat record, or the reason it is not one."""
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        return BadRecord("not_a_chat", where, "no 'messages' and no 'prompt'/'completion' fields")
    problem = check_messages(messages)
    if problem is not None:
        return BadRecord(problem[0], where, problem[1])
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


class ChatSource(ListedFilesSource, Source):
    """Chats from JSON Lines: ``{"messages": [{"role": "system|user|assistant", "content":
    "..."}]}`` or ``{"prompt": "...", "completion": "..."}`` per line.

    Lines without an assistant turn, with an unknown role or with empty content are
    dropped with the reason and ``file:line`` (see ``report.json``); extra fields are
    ignored (they never reach the cache).
    """

    patterns = ("*.jsonl", "*.jsonl.gz", "*.ndjson", "*.ndjson.gz")

    @attrs.define(frozen=True)
    class Options:
        #: Files or folders (every ``.jsonl``/``.jsonl.gz`` file in a folder).
        paths: list[Path] = attrs.field(validator=[existing_paths, _nonempty_paths])
        #: Read files that are symlinks to places outside the named folders.
        follow_symlinks: bool = False

    def read_file(self, path: str) -> Iterator[Located]:
        for where, row in read_jsonl(path):
            yield where, row if isinstance(row, BadRecord) else chat_record(row, where)


class TextSource(ListedFilesSource, Source):
    """Documents for continued pre-training: ``.txt``/``.md`` files, or JSON Lines with a
    text field.

    A plain text file is one record (``unit: file``), or one per blank-line separated
    paragraph (``unit: paragraph``) or per line (``unit: line``). Long documents are cut
    into ``max_length`` windows by the model, not truncated. Non-UTF-8 lines and empty
    documents are dropped with ``file:line``.
    """

    patterns = ("*.txt", "*.md", "*.txt.gz", "*.jsonl", "*.jsonl.gz")

    @attrs.define(frozen=True)
    class Options:
        paths: list[Path] = attrs.field(validator=[existing_paths, _nonempty_paths])
        #: Field holding the document in JSON Lines files.
        text_field: str = "text"
        unit: str = attrs.field(default="file", validator=attrs.validators.in_(["file", "paragraph", "line"]))
        follow_symlinks: bool = False

    def read_file(self, path: str) -> Iterator[Located]:
        if ".jsonl" in Path(path).name:
            yield from self._jsonl(path)
        else:
            yield from self._plain(path)

    def _jsonl(self, path: str) -> Iterator[Located]:
        field = self.options.text_field
        for where, row in read_jsonl(path):
            if isinstance(row, BadRecord):
                yield where, row
                continue
            text = row.get(field)
            if not isinstance(text, str) or not text.strip():
                yield where, BadRecord("empty_text", where, f"no text in field {field!r}")
            else:
                yield where, {"text": text}

    def _plain(self, path: str) -> Iterator[Located]:
        """Paragraphs (or lines, or the file) with the line where each starts."""
        name, unit = Path(path).name, self.options.unit
        lines: list[str] = []
        start = 1
        for lineno, line in iter_lines(path):
            if line is None:
                yield f"{name}:{lineno}", BadRecord("invalid_utf8", f"{name}:{lineno}", "line is not UTF-8")
                continue
            if unit == "line":
                if line.strip():
                    yield from self._document(name, lineno, [line])
                continue
            if unit == "paragraph" and not line.strip():
                yield from self._document(name, start, lines)
                lines, start = [], lineno + 1
                continue
            lines.append(line)
        yield from self._document(name, start, lines)

    @staticmethod
    def _document(name: str, start: int, lines: list[str]) -> Iterator[Located]:
        text = "".join(lines).strip("\n")
        if lines and not text.strip():
            yield f"{name}:{start}", BadRecord("empty_text", f"{name}:{start}")
        elif text.strip():
            yield f"{name}:{start}", {"text": text.lstrip("\ufeff")}

