"""``eval: {file: qa.jsonl}``: exact match of generated answers after training.

Each line of the file is a question with its expected answer: ``{"prompt": "...",
"answer": "..."}``, or ``{"messages": [...], "answer": "..."}``, or ``{"messages": [...]}``
ending with the expected assistant turn. After a run ends, rank 0 loads the run's best
weights, answers every question greedily (temperature 0, the chat template training used,
stopping at EOS) and writes ``eval`` into ``report.json``: the exact-match rate and the
counts. Answers themselves are not stored: generated from private data, they could repeat
it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privet import DataError
from privet.io import read_jsonl


def questions(path: Path) -> list[tuple[list[dict[str, str]], str]]:
    """``(messages to answer, expected answer)`` per line; a line that is neither is refused."""
    out = []
    for where, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: {row.reason} ({row.detail}); fix the eval file")
        messages = row.get("messages")
        answer = row.get("answer")
        if messages is None and isinstance(row.get("prompt"), str):
            messages = [{"role": "user", "content": row["prompt"]}]
        if isinstance(messages, list) and messages and answer is None \
                and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages, answer = messages[:-1], messages[-1].get("content")
        if not isinstance(messages, list) or not messages or not isinstance(answer, str):
            raise DataError(f"{where}: an eval line needs 'prompt' or 'messages' and an 'answer' "
                            f"(or messages ending with the assistant's answer)")
        out.append((messages, answer))
    return out


def normalise(text: str) -> str:
    """Exact match up to surrounding whitespace and runs of spaces."""
    return " ".join(text.split())


def exact_match(model: Any, module: Any, path: Path, max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers of ``module`` to the questions in ``path``, scored by exact match."""
    from .generation import generate

    items = questions(path)
    correct = 0
    for messages, answer in items:
        reply = "".join(generate(module, model.tokenizer, messages, max_new_tokens=max_new_tokens,
                                 temperature=0.0, chat_template=model.options.chat_template))
        correct += normalise(reply) == normalise(answer)
    return {"file": str(path), "questions": len(items), "correct": correct,
            "exact_match": correct / len(items) if items else None}


def evaluate_run(run: Any, report: dict[str, Any]) -> None:
    """The ``after_run`` work: score the run's best weights and add ``eval`` to report.json."""
    from privet import load_trained

    from .model import CausalLM

    model = run.components.model
    if not isinstance(model, CausalLM) or model.options.eval is None or not run.is_main:
        return
    options = model.options.eval
    trained, module = load_trained(run.run_dir, run.host)
    report["eval"] = exact_match(trained, module, Path(options.file), options.max_new_tokens)
    run.storage.write_json("report.json", report)
