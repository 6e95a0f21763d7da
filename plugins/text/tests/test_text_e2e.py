"""End to end through the engine: classifier accuracy, GPT perplexity, PII never written,
tokenizer saved and reloaded, bad input counted, ``privet generate`` and ``privet init text``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .conftest import sentiment_rows, story_rows, write_jsonl

GPT_OPTIONS = {"layers": 2, "hidden": 64, "heads": 4, "context_length": 32, "dropout": 0.0,
               "tokenizer": {"kind": "bpe", "vocab_size": 200}}


def privet_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRIVET_LOAD_PLUGINS": "text"}  # only this plugin: fast and isolated
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"  # see conftest: one thread per xdist worker
    return subprocess.run([sys.executable, "-m", "privet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def test_classifier_learns_a_separable_corpus_above_95_percent_quickly(host, run_pipeline, tmp_path):
    write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(800))
    started = time.perf_counter()
    outcome = run_pipeline({
        "name": "sentiment",
        "data": {
            "source": {"name": "text.jsonl", "options": {"paths": ["reviews.jsonl"]}},
            "cleaners": ["text.normalize", "text.redact_pii"],
            "augmenters": [{"name": "text.random_swap", "options": {"p": 0.3}}],
            "split": {"val": 0.2},
        },
        "model": {"name": "text.classifier", "options": {
            "layers": 1, "hidden": 32, "heads": 2, "max_length": 32, "tokenizer": {"vocab_size": 300}}},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": {"lr": 0.003}},
    })
    elapsed = time.perf_counter() - started
    outcome.assert_success()
    assert outcome.report["final"]["val/accuracy"] > 0.95
    assert outcome.report["final"]["val/f1"] > 0.95
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_gpt_beats_the_unigram_baseline_saves_its_tokenizer_and_generates(host, tmp_path):
    """One small GPT run, read three ways (one run: the expensive part of this file)."""
    rows = story_rows(300)
    write_jsonl(tmp_path / "stories.jsonl", rows)
    from privet.train.engine import run_from_config
    from privet.train.loading import load_trained

    run_dir, report = run_from_config({
        "name": "stories",
        "runs_dir": str(tmp_path / "runs"),
        "data": {"source": {"name": "text.jsonl",
                            "options": {"paths": ["stories.jsonl"], "label_field": None}},
                 "cleaners": ["text.normalize"],
                 "split": {"val": 0.1}},
        "model": {"name": "text.gpt", "options": GPT_OPTIONS},
        "train": {"epochs": 4, "batch_size": 16, "optimizer": {"lr": 0.003}},
    }, host=host, base_dir=tmp_path)
    assert report["status"] == "completed"

    # 1. validation perplexity well below a unigram model's, which is fitted on the whole
    #    corpus and scored on the same corpus (optimistic for the baseline)
    model, module = load_trained(run_dir, host=host)
    tok = model.tokenizer
    stream = [t for r in rows for t in tok.encode(r["text"]) + [tok.eos_id]]
    counts = Counter(stream)
    log_prob = sum(n * math.log((n + 1) / (len(stream) + tok.vocab_size)) for n in counts.values())
    unigram = math.exp(-log_prob / len(stream))
    perplexity = report["final"]["val/perplexity"]
    assert perplexity < 0.5 * unigram, f"GPT {perplexity:.2f} vs unigram {unigram:.2f}"

    # 2. the tokenizer reloaded with the run reproduces the ids the run packed into its cache
    import pyarrow as pa

    cache = Path(report["data"]["cache"])

    def first_table(kind: str):
        path = sorted((cache / kind).glob("train-*.arrow"))[0]
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all().to_pylist()

    records, examples = first_table("records"), first_table("examples")
    packed: list[int] = []
    for record in records[:20]:
        packed += tok.encode(record["text"]) + [tok.eos_id]
    size = GPT_OPTIONS["context_length"] + 1
    assert examples[0]["ids"] == packed[:size]
    assert examples[1]["ids"] == packed[size - 1: 2 * size - 1]
    assert module.tok_emb.num_embeddings == tok.vocab_size

    # 3. privet generate (a core command: generation is a model capability) prints the
    # prompt (--echo) and a continuation; the same seed gives the same text
    args = ("generate", str(run_dir), "--prompt", "the cat", "--max-new-tokens", "20",
            "--seed", "1", "--top-k", "20", "--top-p", "0.95")
    result = privet_cli(*args, "--echo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    assert text.startswith("the cat") and len(text) > len("the cat") + 5
    again = privet_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert result.stdout == "the cat" + again.stdout


def test_privet_generate_on_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path):
    result = privet_cli("generate", str(tmp_path), "--prompt", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert "not a Privet run folder" in result.stderr and "Traceback" not in result.stderr


PII_ROWS = [
    ("Contact alice.smith@example.com about the order", "pos"),
    ("Call me on +44 20 7946 0958 tomorrow please", "neg"),
    ("My card 4111 1111 1111 1111 was charged twice", "neg"),
    ("Pay to DE89 3704 0044 0532 0130 00 by Friday", "pos"),
    ("Server 10.20.30.40 is down again", "neg"),
    ("Ticket number 4111 1111 1111 1112 is not a card", "pos"),
]
SECRETS = ["alice.smith@example.com", "alice.smith", "7946 0958", "4111 1111 1111 1111",
           "4111111111111111", "DE89 3704 0044 0532 0130 00", "10.20.30.40"]


def test_pii_is_redacted_before_anything_reaches_the_run_folder_or_cache(host, run_pipeline, tmp_path):
    lines = ["text,label"]
    for i in range(40):
        for text, label in PII_ROWS:
            lines.append(f'"{text} ({i})",{label}')
    (tmp_path / "tickets.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    outcome = run_pipeline({
        "name": "pii",
        "data": {"source": {"name": "text.csv", "options": {"paths": ["tickets.csv"]}},
                 "cleaners": ["text.redact_pii", "text.normalize"],
                 "split": {"val": 0.2}},
        "model": {"name": "text.classifier", "options": {
            "arch": "bag", "hidden": 16, "tokenizer": {"vocab_size": 300, "min_frequency": 1}}},
        "train": {"epochs": 1, "batch_size": 32, "checkpoint": {"every_n_steps": 2}},
    })
    outcome.assert_success()
    cleaners = outcome.report["data"]["cleaners"]
    counts = next(v for k, v in cleaners.items() if k.endswith("text.redact_pii"))
    assert counts == {"CARD": 40, "EMAIL": 40, "IBAN": 40, "IP": 40, "PHONE": 40}
    cache = Path(outcome.report["data"]["cache"])
    written = files_under(outcome.run_dir, cache)
    assert any(p.suffix == ".arrow" for p in written) and any(p.suffix == ".safetensors" for p in written)
    for path in written:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} found in {path}"
    # the check reads the right files: the invalid-Luhn number is kept, and is found
    assert any(b"4111 1111 1111 1112" in p.read_bytes() for p in written if p.suffix == ".arrow")


def test_bad_input_is_dropped_with_reasons_and_counted_while_the_run_continues(host, run_pipeline, tmp_path):
    good = [f'{{"text": "{r["text"]}", "label": "{r["label"]}"}}'.encode() for r in sentiment_rows(300)]
    lines = good[:100] + [b'{"text": "cut off', b'{"text": ""}', b'{"text": "caf\xe9"}',
                          b'{"text": "x", "label": "pos"', b'{"text": "   ", "label": "neg"}'] + good[100:]
    (tmp_path / "messy.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    outcome = run_pipeline({
        "name": "messy",
        "data": {"source": {"name": "text.jsonl", "options": {"paths": ["messy.jsonl"]}},
                 "max_bad_fraction": 0.05, "split": {"val": 0.2}},
        "model": {"name": "text.classifier", "options": {"arch": "bag", "hidden": 16,
                                                         "tokenizer": {"vocab_size": 200}}},
        "train": {"epochs": 1, "batch_size": 64},
    })
    outcome.assert_success()
    data = outcome.report["data"]
    assert data["dropped"] == {"malformed_json": 2, "empty_text": 2, "invalid_utf8": 1}
    assert data["counts"]["train"] + data["counts"]["val"] == 300
    # each example names the file and line, then the parser's reason
    assert [e.split(": ", 1)[0] for e in data["dropped_examples"]["malformed_json"]] == [
        "messy.jsonl:101", "messy.jsonl:104"]


def test_a_chinese_corpus_from_a_folder_of_text_files_with_dataloader_workers(host, run_pipeline, tmp_path):
    import random

    rng = random.Random(3)
    topics = {"sport": "足球 比赛 球队 进球 冠军 教练 球员", "weather": "天气 下雨 晴天 温度 大风 气温 阴天"}
    common = "今天 我们 看到 非常 这个 那么 觉得 真的".split()
    for label, words in topics.items():
        (tmp_path / "docs" / label).mkdir(parents=True)
        for i in range(60):
            picked = rng.sample(words.split(), 2) + rng.sample(common, 4)
            rng.shuffle(picked)
            (tmp_path / "docs" / label / f"{i}.txt").write_text("".join(picked) + "。", encoding="utf-8")
    outcome = run_pipeline({
        "name": "zh",
        "data": {"source": {"name": "text.files", "options": {"path": "docs"}},
                 "cleaners": ["text.normalize", {"name": "text.dedupe", "options": {"method": "minhash"}}],
                 "num_workers": 1, "split": {"val": 0.25}},
        "model": {"name": "text.classifier", "options": {
            "arch": "bag", "hidden": 32, "tokenizer": {"kind": "unigram", "vocab_size": 200}}},
        "train": {"epochs": 8, "batch_size": 16, "optimizer": {"lr": 0.01}},
    })
    outcome.assert_success()
    assert outcome.report["final"]["val/accuracy"] > 0.9


def test_privet_init_text_writes_a_starter_pipeline_that_validates(tmp_path):
    result = privet_cli("init", "text", "-o", "pipeline.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "pipeline.yaml").read_text(encoding="utf-8")
    assert "text.classifier" in text and "text.redact_pii" in text
    # the fastest good result first: a bag model at its own default lr (0.01); transformer in a comment
    import yaml

    starter = yaml.safe_load(text)
    assert starter["model"]["options"]["arch"] == "bag" and "arch: transformer" in text
    assert "lr" not in starter["train"]["optimizer"]
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "text.jsonl", sentiment_rows(5))
    checked = privet_cli("validate", "pipeline.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "valid" in checked.stdout


class _CountsTexts:
    """A test plugin: a cleaner that needs a fitting pass, so the source is streamed twice."""

    from privet import Cleaner, hookimpl

    class FitsOnTrain(Cleaner):
        needs_fit = True

        def fit(self, records):
            self.seen = sum(1 for _ in records)

        def clean(self, record):
            return record

    @staticmethod
    @hookimpl
    def register_cleaners(register):
        register("test.fits_on_train", _CountsTexts.FitsOnTrain)


def test_pii_in_kept_fields_labels_and_chat_messages_never_reaches_the_run_folder_or_cache(
        host, run_pipeline, tmp_path):
    host.register_plugin(_CountsTexts, "counts-texts")
    rows = []
    for i in range(60):
        label = "pos" if i % 3 else f"ask carol{i % 2}@help.example"  # PII in the label itself
        rows.append({"text": f"ticket {i} from dave{i}@mail.example is great",
                     "label": label,
                     "author": f"Dave Jones <dave.jones{i}@corp.example>",
                     "messages": [{"role": "user", "content": f"call me on +44 20 7946 {1000 + i}"}]})
    write_jsonl(tmp_path / "tickets.jsonl", rows)
    outcome = run_pipeline({
        "name": "pii-fields",
        "data": {"source": {"name": "text.jsonl", "options": {
                     "paths": ["tickets.jsonl"], "keep_fields": ["author", "messages"]}},
                 "cleaners": ["text.normalize", "text.redact_pii", "test.fits_on_train"],
                 "split": {"val": 0.2}},
        "model": {"name": "text.classifier", "options": {
            "arch": "bag", "hidden": 8, "tokenizer": {"vocab_size": 100, "min_frequency": 1}}},
        "train": {"epochs": 1, "batch_size": 32},
    })
    outcome.assert_success()
    assert sum(outcome.report["data"]["counts"].values()) == 60
    counts = next(v for k, v in outcome.report["data"]["cleaners"].items() if k.endswith("text.redact_pii"))
    # what was replaced, once, although the source was read twice: 60 texts, 60 authors, 20 labels
    assert counts == {"EMAIL": 140, "PHONE": 60}
    cache = Path(outcome.report["data"]["cache"])
    written = files_under(outcome.run_dir, cache)
    arrow = [p for p in written if p.suffix == ".arrow"]
    assert arrow, "no cache shards written"
    for path in written:
        data = path.read_bytes()
        for secret in (b"@mail.example", b"@corp.example", b"@help.example", b"7946 10"):
            assert secret not in data, f"{secret!r} found in {path}"
    # the shards hold the kept fields, redacted: the check above reads the right bytes
    import pyarrow as pa

    shard = sorted(p for p in arrow if "records" in p.parts)[0]
    table = pa.ipc.open_file(pa.memory_map(str(shard), "r")).read_all().to_pylist()
    assert table[0]["author"] == "Dave Jones <<EMAIL>>"
    assert table[0]["messages"][0]["content"] == "call me on <PHONE>"
    assert {r["label"] for r in table} == {"pos", "ask <EMAIL>"}


def test_a_regex_re2_cannot_run_is_refused_at_validation_in_one_line_naming_file_and_key(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", sentiment_rows(4))
    (tmp_path / "p.yaml").write_text(
        "name: t\n"
        "data:\n"
        "  source: {name: text.jsonl, options: {paths: [d.jsonl]}}\n"
        "  cleaners:\n"
        "    - name: text.redact_pii\n"
        "      options: {patterns: {ID: '(\\d)\\1{5}'}}\n"
        "model: {name: text.classifier, options: {arch: bag}}\n", encoding="utf-8")
    result = privet_cli("validate", "p.yaml", cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "p.yaml:6" in line and "data.cleaners.0.options.patterns" in line and "RE2" in line
