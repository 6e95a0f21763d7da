"""Each model family the issue names trains under DP-SGD; BatchNorm is refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path


PRIVACY = {"mechanism": "dp-sgd", "noise_multiplier": 0.8, "max_grad_norm": 1.0,
           "randomness": "seeded"}  # accuracy thresholds: repeatable draws
GOOD = ["great", "lovely", "superb", "happy", "fine"]
BAD = ["awful", "poor", "sad", "broken", "ugly"]
FILLER = ["the", "a", "it", "was", "and", "very", "this", "film", "food", "day"]


def write_reviews(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            cue = GOOD if label == "pos" else BAD
            words = [rng.choice(FILLER) for _ in range(3)] + [rng.choice(cue) for _ in range(3)]
            rng.shuffle(words)
            fh.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")


def text_pipeline(arch: str) -> dict:
    return {
        "name": f"text-{arch}", "seed": 0,
        "data": {"source": {"name": "text.jsonl", "options": {"paths": ["reviews.jsonl"]}},
                 "split": {"val": 0.2}},
        "model": {"name": "text.classifier", "options": {
            "arch": arch, "layers": 1, "hidden": 16, "heads": 2, "max_length": 16,
            "tokenizer": {"vocab_size": 100}}},
        "train": {"epochs": 4, "batch_size": 32, "device": "cpu", "progress": "none",
                  "optimizer": {"name": "adamw", "lr": 0.2}},
        "privacy": PRIVACY,
    }


def test_text_classifier_learns_privately(host, run_pipeline, tmp_path):
    write_reviews(tmp_path / "reviews.jsonl", 400)
    out = run_pipeline(text_pipeline("bag"), plugins=["text"])

    out.assert_success()
    assert out.report["privacy"]["epsilon"] > 0
    assert out.report["final"]["val/accuracy"] > 0.8


def test_text_transformer_classifier_trains_privately(host, run_pipeline, tmp_path):
    write_reviews(tmp_path / "reviews.jsonl", 200)
    config = text_pipeline("transformer")
    config["train"]["epochs"] = 1
    out = run_pipeline(config, plugins=["text"])

    out.assert_success()
    assert out.report["privacy"]["steps"] > 0


def test_a_layer_fed_without_the_batch_dimension_is_refused_in_one_line(host, run_pipeline, tmp_path):
    # text.gpt adds pos_emb(arange(T)): shape (T,), shared by the batch, so no per-example
    # gradient of pos_emb exists (Opacus would fail deep in a stack)
    write_reviews(tmp_path / "reviews.jsonl", 100)
    config = text_pipeline("transformer")
    config["model"] = {"name": "text.gpt", "options": {
        "layers": 1, "hidden": 16, "heads": 2, "context_length": 16, "tokenizer": {"vocab_size": 100}}}
    out = run_pipeline(config, plugins=["text"])

    assert out.error is not None and "\n" not in str(out.error)
    assert "'pos_emb'" in str(out.error) and "privacy.mechanism" in str(out.error)


def image_pipeline(root: Path, norm: str) -> dict:
    return {
        "name": f"cnn-{norm}", "seed": 0,
        "data": {"source": {"name": "image.folder", "options": {"root": str(root)}},
                 "cleaners": ["image.verify", "image.convert"],
                 "split": {"method": "random", "val": 0.2}},
        "model": {"name": "image.cnn", "options": {"widths": [8, 16], "norm": norm, "groups": 4,
                                                    "input_size": 16}},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "progress": "none"},
        "privacy": PRIVACY,
    }


def test_image_cnn_with_group_norm_trains_privately(host, run_pipeline, tmp_path):
    from privet_image.shapes import write_folder

    write_folder(tmp_path / "shapes", per_class=16, size=16, seed=1)
    out = run_pipeline(image_pipeline(tmp_path / "shapes", "group"), plugins=["image"])

    out.assert_success()
    assert out.report["privacy"]["steps"] == out.report["steps"] > 0


def test_batch_norm_is_refused_in_one_line_suggesting_group_norm(host, run_pipeline, tmp_path):
    from privet_image.shapes import write_folder

    write_folder(tmp_path / "shapes", per_class=4, size=16, seed=1)
    out = run_pipeline(image_pipeline(tmp_path / "shapes", "batch"), plugins=["image"])

    assert out.error is not None and "\n" not in str(out.error)
    assert "BatchNorm" in str(out.error) and "norm: group" in str(out.error)
    assert getattr(out.error, "exit_code", None) == 2


def lstm_pipeline(root: Path, rows: int) -> dict:
    """The time-series LSTM on a synthetic seasonal CSV written into ``root``."""
    from privet_timeseries.synthetic import seasonal_rows, write_csv

    write_csv(root / "series.csv", seasonal_rows(rows, seed=4))
    return {
        "name": "lstm", "seed": 0,
        "data": {"source": {"name": "timeseries.csv", "options": {
                     "paths": ["series.csv"], "series_column": "series", "target_columns": ["value"],
                     "feature_columns": ["temperature"]}},
                 "split": {"method": "ordered", "val": 0.2}},
        "model": {"name": "timeseries.lstm", "options": {"input_length": 12, "horizon": 3,
                                                          "hidden_size": 8, "num_layers": 1}},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "progress": "none"},
    }


def test_timeseries_lstm_is_swapped_for_dplstm_and_its_weights_export_as_lstm(host, run_pipeline, tmp_path):
    out = run_pipeline({**lstm_pipeline(tmp_path, 300), "privacy": PRIVACY}, plugins=["timeseries"])

    out.assert_success()
    assert out.report["privacy"]["steps"] > 0
    from privet import load_trained

    model, module = load_trained(out.run_dir, host)  # a plain nn.LSTM takes the DPLSTM's weights
    assert type(module.lstm).__name__ == "LSTM"
