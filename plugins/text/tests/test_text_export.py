"""Export bundles of text models: the tokenizer travels as tokenizer.json, and
``privet predict`` on the bundle answers as the eager model in the run does."""

from __future__ import annotations

import io
import json

import torch

from .conftest import sentiment_rows, story_rows, write_jsonl


def test_classifier_bundle_holds_the_tokenizer_and_predicts_like_the_eager_model(host, run_pipeline, tmp_path):
    from privet.export.bundle import export_run
    from privet.export.predict import predict_path
    from privet.train.loading import load_trained
    from tokenizers import Tokenizer

    write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(300))
    outcome = run_pipeline({
        "name": "clf",
        "data": {"source": {"name": "text.jsonl", "options": {"paths": ["reviews.jsonl"]}},
                 "cleaners": ["text.normalize", "text.dedupe"], "split": {"val": 0.2}},
        "model": {"name": "text.classifier", "options": {
            "layers": 1, "hidden": 32, "heads": 2, "max_length": 32, "tokenizer": {"vocab_size": 200}}},
        "train": {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.003}},
    })
    outcome.assert_success()
    export_run(outcome.run_dir, host=host, formats=["onnx"])
    bundle = outcome.run_dir / "export"
    assert json.loads((bundle / "labels.json").read_text()) == ["neg", "pos"]
    model, module = load_trained(outcome.run_dir, host=host)
    standalone = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    sample = "the acting was wonderful really"
    assert standalone.encode(sample, add_special_tokens=False).ids == model.tokenizer.encode(sample)

    inputs = ["the acting was wonderful really", "a dismal and boring film", "quite a story",
              "the film was great the film was great"]
    write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in inputs] + [{"other": 1}])
    out = io.StringIO()
    predict_path(bundle, tmp_path / "new.jsonl", out, host=host)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[-1]["error"] == "missing_text"
    for text, row in zip(inputs, rows):
        ids, _ = model.encode_inputs({"text": text})
        with torch.no_grad():
            probs = module(ids[None], torch.ones(1, len(ids), dtype=torch.long)).softmax(-1)[0]
        assert row["label"] == model.labels[int(probs.argmax())]
        assert max(abs(a - float(b)) for a, b in zip(row["probabilities"], probs)) < 1e-4


def test_gpt_bundle_generates_the_eager_models_greedy_continuation(host, run_pipeline, tmp_path):
    from privet.export.bundle import export_run
    from privet.export.predict import predict_path
    from privet.train.loading import load_trained

    write_jsonl(tmp_path / "stories.jsonl", story_rows(150))
    outcome = run_pipeline({
        "name": "gpt",
        "data": {"source": {"name": "text.jsonl", "options": {"paths": ["stories.jsonl"], "label_field": None}},
                 "split": {"val": 0.1}},
        "model": {"name": "text.gpt", "options": {
            "layers": 1, "hidden": 32, "heads": 2, "context_length": 16, "predict_max_new_tokens": 8,
            "tokenizer": {"vocab_size": 150}}},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 0.003}},
    })
    outcome.assert_success()
    export_run(outcome.run_dir, host=host, formats=["onnx"])
    assert (outcome.run_dir / "export" / "tokenizer.json").is_file()
    model, module = load_trained(outcome.run_dir, host=host)
    prompts = ["the cat", "my friend helps"]
    write_jsonl(tmp_path / "prompts.jsonl", [{"text": p} for p in prompts])
    out = io.StringIO()
    predict_path(outcome.run_dir / "export", tmp_path / "prompts.jsonl", out, host=host)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    for prompt, row in zip(prompts, rows):
        eager = "".join(model.generate(module, prompt, max_new_tokens=8, temperature=0))
        assert row["generated"] == eager and row["text"].startswith(prompt)
