"""llm.chat and llm.text: the record shapes, drops with reason and file:line, symlink
refusal, and the text plugin's PII redaction on chat messages before the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from privet import BadRecord

from conftest import llm_pipeline, reverse_chats, write_jsonl


def _read(host, name: str, options: dict) -> list[tuple[str, object]]:
    source = host.make("source", name, options)
    return [item for shard in source.shards() for item in source.read_located(shard)]


def test_chat_source_reads_messages_and_prompt_completion_pairs(host, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}], "id": 7},
        {"prompt": "2+2?", "completion": "4"},
    ])
    items = [item for _where, item in _read(host, "llm.chat", {"paths": [str(path)]})]
    assert items[0] == {"messages": [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"}]}
    assert items[1] == {"messages": [{"role": "user", "content": "2+2?"},
                                     {"role": "assistant", "content": "4"}]}


def test_malformed_chats_are_dropped_with_reason_and_line(host, tmp_path):
    good = reverse_chats(1)[0]
    path = write_jsonl(tmp_path / "bad.jsonl", [
        good,
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},
        {"prompt": "p", "completion": ""},
        {"text": "not a chat"},
        "{not json",
        {"messages": "a string"},
    ])
    got = [(where, item.reason) for where, item in _read(host, "llm.chat", {"paths": [str(path)]})
           if isinstance(item, BadRecord)]
    assert got == [("bad.jsonl:2", "no_assistant_turn"), ("bad.jsonl:3", "unknown_role"),
                   ("bad.jsonl:4", "empty_content"), ("bad.jsonl:5", "empty_content"),
                   ("bad.jsonl:6", "not_a_chat"), ("bad.jsonl:7", "malformed_json"),
                   ("bad.jsonl:8", "no_messages")]


def test_text_source_reads_files_paragraphs_lines_and_jsonl(host, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first para\nstill first\n\n\nsecond para\n", encoding="utf-8")
    (docs / "b.jsonl").write_text('{"body": "from json"}\n{"body": ""}\n', encoding="utf-8")
    (docs / "c.txt").write_bytes(b"ok line\n\xff\xfe bad\n")

    def texts(unit):
        items = _read(host, "llm.text", {"paths": [str(docs)], "unit": unit, "text_field": "body"})
        return [(w, i["text"] if isinstance(i, dict) else i.reason) for w, i in items]

    assert texts("paragraph") == [("a.txt:1", "first para\nstill first"), ("a.txt:5", "second para"),
                                  ("b.jsonl:1", "from json"), ("b.jsonl:2", "empty_text"),
                                  ("c.txt:2", "invalid_utf8"), ("c.txt:1", "ok line")]
    assert texts("file")[0] == ("a.txt:1", "first para\nstill first\n\n\nsecond para")
    assert [t for w, t in texts("line") if w.startswith("a.txt")] == [
        "first para", "still first", "second para"]


def test_chat_files_symlinked_out_of_the_folder_are_not_read(host, tmp_path):
    secret = write_jsonl(tmp_path / "secret.jsonl", reverse_chats(2))
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "ok.jsonl", reverse_chats(1))
    os.symlink(secret, folder / "link.jsonl")
    source = host.make("source", "llm.chat", {"paths": [str(folder)]})
    items = [item for shard in source.shards() for _w, item in source.read_located(shard)]
    assert [i.reason for i in items if isinstance(i, BadRecord)] == ["outside_root"]
    assert sum(isinstance(i, dict) for i in items) == 1
    assert str(secret) not in source.files() and not any(Path(f).name == "link.jsonl" for f in source.files())


@pytest.mark.parametrize("name", ["llm.chat", "llm.text"])
def test_sources_refuse_missing_paths_naming_the_key(host, tmp_path, name):
    from privet import ConfigError, OptionValueError

    with pytest.raises((ConfigError, OptionValueError), match="paths"):
        host.make("source", name, {"paths": [str(tmp_path / "nope.jsonl")]})


def test_redact_pii_from_the_text_plugin_cleans_every_message_before_the_cache(
        host, run_pipeline, ckpt, tmp_path):
    pytest.importorskip("privet_text")
    rows = reverse_chats(30)
    rows[0] = {"messages": [{"role": "user", "content": "mail me at jane.doe@example.com"},
                            {"role": "assistant", "content": "call +1 415 555 0100 or jane.doe@example.com"}]}
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    config = llm_pipeline(ckpt("qwen2"), data)
    config["data"]["cleaners"] = ["text.redact_pii"]
    config["data"]["split"] = {"method": "ordered", "val": 0.2}
    config["train"]["epochs"] = 1
    outcome = run_pipeline(config, plugins=["text"])
    outcome.assert_success()
    cache_files = [p for p in Path(outcome.report["data"]["cache"]).rglob("*") if p.is_file()]
    assert cache_files
    for path in cache_files:
        blob = path.read_bytes()
        assert b"jane.doe@example.com" not in blob and b"555 0100" not in blob, path
    assert outcome.report["data"]["cleaners"], outcome.report["data"]


def test_continued_pre_training_on_documents_runs_with_a_lora_adapter(host, run_pipeline, ckpt, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"d{i}.txt").write_text("the little man said hello to the big dog. " * (3 + i % 4),
                                        encoding="utf-8")
    config = llm_pipeline(ckpt("llama"), docs, max_length=32)
    config["data"]["source"] = {"name": "llm.text", "options": {"paths": [str(docs)]}}
    config["train"]["epochs"] = 2
    outcome = run_pipeline(config)
    outcome.assert_success()
    counts = outcome.report["model"]["examples"]["train"]
    assert counts["documents_windowed"] > 0 and counts["target_tokens"] == counts["tokens"] - counts["sequences"]
    history = [h["val/loss"] for h in outcome.report["history"]]
    assert history[1] < history[0]
