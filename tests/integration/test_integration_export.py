"""Export acceptance across the modalities: every format, verification, predict = eager, int8.

One trained run per model (text classifier, text GPT, image CNN and ResNet, LSTM, TFT),
exported to all formats; ``privet predict``'s machinery is run once with each artifact
and once with the eager module in its place, and the predictions must agree.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from privet.export.bundle import Bundle, export_run
from privet.export.predict import Predictor
from privet.train.loading import load_trained

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def host(privet_host):
    from privet_image import plugin as image
    from privet_text import plugin as text
    from privet_timeseries import plugin as timeseries

    privet_host.register_plugin(text, "text")
    privet_host.register_plugin(image, "image")
    privet_host.register_plugin(timeseries, "timeseries")
    return privet_host


def eager_runner(module: Any):
    def run(feed: dict[str, Any]) -> list[Any]:
        with torch.no_grad():
            out = module(*[torch.as_tensor(v) for v in feed.values()])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().numpy() for o in outs]

    return run


def predictions(run_dir: Path, host: Any, inputs: Path, artifact: str | None,
                eager: bool = False) -> list[dict[str, Any]]:
    """Entries ``privet predict`` writes, with an artifact or with the eager module."""
    predictor = Predictor(Bundle.open(run_dir / "export"), host, artifact=artifact or "onnx",
                          trust_code=True)  # our own bundle: TorchScript and .pt2 may run
    if eager:
        _model, module = load_trained(run_dir, host)
        predictor.run = eager_runner(module)
    if predictor.windowed:
        located = predictor.bundle.read_with_source(host, inputs)
    else:
        located = predictor.model.read_inputs(inputs)
    return list(predictor.predict(iter(located)))


def same(x: Any, y: Any, tol: float) -> bool:
    """Equal, with numbers (also inside lists and dicts) equal within ``tol``."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k], tol) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(same(u, v, tol) for u, v in zip(x, y))
    if isinstance(x, float):
        return isinstance(y, (int, float)) and abs(x - y) <= tol
    return x == y


def assert_same(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert same(x, y, tol), (x, y)


def export_all(run_dir: Path, host: Any, quantize: str | None = None) -> dict[str, Any]:
    report = export_run(run_dir, host=host, formats=["all"], quantize=quantize, log=None)
    meta = json.loads((run_dir / "export" / "bundle.json").read_text())
    for name in ("torch_export", "onnx", "torchscript"):
        assert meta["artifacts"][name]["verified"], (name, meta["artifacts"][name])
        checks = meta["artifacts"][name]["verification"]
        assert checks["example_inputs"]["ok"], name
        assert checks.get("validation", {"ok": True})["ok"], name
    return meta


def check_predict(run_dir: Path, host: Any, inputs: Path,
                  artifacts: tuple[str, ...] = ("onnx", "torch_export", "torchscript")) -> None:
    eager = predictions(run_dir, host, inputs, None, eager=True)
    assert any("error" not in e for e in eager), eager[:3]
    for artifact in artifacts:
        assert_same(predictions(run_dir, host, inputs, artifact), eager)


# --- text --------------------------------------------------------------------------------

WORDS = {"pos": "great wonderful excellent lovely superb brilliant".split(),
         "neg": "terrible awful horrible dreadful boring dismal".split()}
FILLER = "the product arrived today and it was quite as described overall".split()


def write_reviews(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(FILLER, 5) + rng.sample(WORDS[label], 2)
            rng.shuffle(words)
            fh.write(json.dumps({"id": i, "text": " ".join(words), "label": label}) + "\n")
    return path


def test_text_classifier_exports_everywhere_quantizes_and_predicts_like_eager(host, run_pipeline, tmp_path):
    write_reviews(tmp_path / "reviews.jsonl", 1200, seed=1)
    outcome = run_pipeline({
        "name": "clf", "data": {"source": {"name": "text.jsonl", "options": {"paths": ["reviews.jsonl"]}},
                                "split": {"val": 0.25}},
        "model": {"name": "text.classifier", "options": {
            "hidden": 128, "layers": 2, "heads": 4, "max_length": 16,
            "tokenizer": {"kind": "bpe", "vocab_size": 300}}},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": {"lr": 0.003}, "progress": "none"}})
    outcome.assert_success()
    assert outcome.report["final"]["val/accuracy"] > 0.95
    meta = export_all(outcome.run_dir, host, quantize="int8")
    q = meta["artifacts"]["onnx_int8"]["quantization"]
    # most weight sits in the encoder's Linear layers here: int8 is about a quarter of fp32
    assert q["size_ratio"] <= 0.35, q
    assert q["metrics_after"]["accuracy"] >= q["metrics_before"]["accuracy"] - 0.01, q
    assert (outcome.run_dir / "export" / "tokenizer.json").is_file()
    new = write_reviews(tmp_path / "new.jsonl", 20, seed=9)
    check_predict(outcome.run_dir, host, new)


def test_text_gpt_exports_everywhere_and_generates_like_eager(host, run_pipeline, tmp_path):
    write_reviews(tmp_path / "corpus.jsonl", 300, seed=2)
    outcome = run_pipeline({
        "name": "gpt", "data": {"source": {"name": "text.jsonl", "options": {
            "paths": ["corpus.jsonl"], "label_field": None}}, "split": {"val": 0.1}},
        "model": {"name": "text.gpt", "options": {
            "layers": 1, "hidden": 32, "heads": 2, "context_length": 16,
            "tokenizer": {"kind": "bpe", "vocab_size": 200}}},
        "train": {"epochs": 1, "batch_size": 16, "progress": "none"}})
    outcome.assert_success()
    export_all(outcome.run_dir, host)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                               for i, t in enumerate(["the product", "great and", "awful"])))
    # generation feeds growing sequences: only the ONNX artifact has a dynamic sequence axis
    # for this model (torch.export falls back to static shapes; see docs/export.md)
    check_predict(outcome.run_dir, host, prompts, artifacts=("onnx",))


# --- image -------------------------------------------------------------------------------

def image_pipeline(root: Path, model: dict, epochs: int) -> dict:
    return {
        "name": model["name"].split(".")[-1],
        "data": {"source": {"name": "image.folder", "options": {"root": str(root)}},
                 "cleaners": ["image.verify", "image.convert"], "split": {"val": 0.25}},
        "model": model,
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"lr": 0.003},
                  "progress": "none"},
    }


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    from privet_image.shapes import write_folder

    root = tmp_path / "shapes"
    write_folder(root, per_class=120, size=32, seed=3)
    return root


def test_image_cnn_int8_keeps_accuracy_and_predicts_like_eager(host, run_pipeline, shapes, tmp_path):
    outcome = run_pipeline(image_pipeline(shapes, {"name": "image.cnn", "options": {
        "input_size": 32, "widths": [16, 32, 64]}}, epochs=12))
    outcome.assert_success()
    meta = export_all(outcome.run_dir, host, quantize="int8-static")
    q = meta["artifacts"]["onnx_int8"]["quantization"]
    assert q["size_ratio"] <= 0.35, q
    assert q["metrics_after"]["accuracy"] >= q["metrics_before"]["accuracy"] - 0.01, q
    inputs = tmp_path / "to_predict"
    inputs.mkdir()
    for shape in ("circle", "square", "triangle"):
        for i in range(3):
            name = f"{i:04d}.png"
            (inputs / f"{shape}-{name}").write_bytes((shapes / shape / name).read_bytes())
    check_predict(outcome.run_dir, host, inputs)


def test_image_resnet_exports_everywhere_and_predicts_like_eager(host, run_pipeline, shapes, tmp_path):
    outcome = run_pipeline(image_pipeline(shapes, {"name": "image.resnet", "options": {
        "depth": 18, "input_size": 32, "norm": "group"}}, epochs=1))
    outcome.assert_success()
    export_all(outcome.run_dir, host)
    check_predict(outcome.run_dir, host, shapes / "circle")


# --- time series -------------------------------------------------------------------------

def forecast_pipeline(model: dict) -> dict:
    return {
        "name": model["name"].split(".")[-1],
        "data": {"source": {"name": "timeseries.csv", "options": {
            "paths": ["series.csv"], "series_column": "series", "target_columns": ["value"],
            "feature_columns": ["temperature"]}},
            "cleaners": [{"name": "timeseries.calendar", "options": {"features": ["hour"]}}],
            "split": {"method": "ordered", "val": 0.2}},
        "model": model,
        "train": {"epochs": 2, "batch_size": 64, "progress": "none"},
    }


@pytest.mark.parametrize("model", [
    {"name": "timeseries.lstm", "options": {"input_length": 24, "horizon": 6, "hidden_size": 16}},
    {"name": "timeseries.tft", "options": {"input_length": 24, "horizon": 6, "hidden_size": 16,
                                           "attention_heads": 2}},
], ids=["lstm", "tft"])
def test_forecasters_export_everywhere_and_predict_like_eager(host, run_pipeline, tmp_path, model):
    from privet_timeseries.synthetic import seasonal_rows, write_csv

    write_csv(tmp_path / "series.csv", seasonal_rows(400, n_series=2, seed=4))
    outcome = run_pipeline(forecast_pipeline(model))
    outcome.assert_success()
    export_all(outcome.run_dir, host)
    # recent history per series, then 6 rows with a time but no target: the horizon to forecast
    rows = list(seasonal_rows(60, n_series=2, seed=5))
    for series in ("s0", "s1"):
        for row in [r for r in rows if r["series"] == series][-6:]:
            row["value"] = None
    recent = write_csv(tmp_path / "recent.csv", rows)
    check_predict(outcome.run_dir, host, recent)
    entries = predictions(outcome.run_dir, host, recent, "onnx")
    assert [e.get("series") for e in entries if "error" not in e] == ["s0", "s1"], entries


def test_a_text_bundle_without_its_tokenizer_fails_in_one_line(host, run_pipeline, tmp_path):
    import subprocess
    import sys

    write_reviews(tmp_path / "reviews.jsonl", 200, seed=6)
    outcome = run_pipeline({
        "name": "clf", "data": {"source": {"name": "text.jsonl", "options": {"paths": ["reviews.jsonl"]}}},
        "model": {"name": "text.classifier", "options": {"arch": "bag", "hidden": 16,
                                                         "tokenizer": {"vocab_size": 200}}},
        "train": {"epochs": 1, "progress": "none"}, "export": {"formats": ["onnx"]}})
    outcome.assert_success()
    (outcome.run_dir / "export" / "tokenizer.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "privet", "predict", str(outcome.run_dir / "export"),
                           str(tmp_path / "reviews.jsonl")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokenizer.json" in lines[0] and "Traceback" not in proc.stderr
