"""End to end with the engine: generated shapes, bad files, GroupNorm, pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import privet
from privet_image import plugin
from privet_image.shapes import write_folder

pytest_plugins = ["privet.testing"]


def shapes_pipeline(root: Path, **model_options) -> dict:
    return {
        "name": "shapes",
        "seed": 0,
        "plugins": {"required": ["image"]},
        "data": {
            "source": {"name": "image.folder", "options": {"root": str(root)}},
            "cleaners": ["image.verify", "image.convert"],
            "augmenters": [{"name": "image.random_resized_crop",
                            "options": {"size": 32, "scale": [0.8, 1.0]}},
                           "image.flip"],
            "split": {"method": "random", "val": 0.2},
        },
        "model": {"name": "image.cnn", "options": {"widths": [16, 32, 64], **model_options}},
        "train": {"epochs": 20, "batch_size": 32, "device": "cpu", "scheduler": "cosine",
                  "optimizer": {"name": "adamw", "lr": 0.003}, "log_every_n_steps": 100},
    }


@pytest.fixture
def image_host(privet_host):
    privet_host.register_plugin(plugin, "image")
    return privet_host


def test_small_cnn_learns_generated_shapes_above_90_percent(image_host, run_pipeline, tmp_path):
    root = tmp_path / "shapes"
    write_folder(root, per_class=150, size=32, seed=1)
    outcome = run_pipeline(shapes_pipeline(root))
    outcome.assert_success()
    report = outcome.report
    assert report["data"]["counts"]["train"] + report["data"]["counts"]["val"] == 450
    assert report["final"]["val/accuracy"] > 0.9, report["history"]


def test_bad_files_are_dropped_with_their_reason_and_the_run_completes(
        image_host, run_pipeline, tmp_path, add_bad_files):
    root = tmp_path / "shapes"
    write_folder(root, per_class=12, size=32, seed=2)
    added = add_bad_files(root)
    config = shapes_pipeline(root)
    config["data"]["max_bad_fraction"] = 0.2
    config["data"]["cleaners"] = [{"name": "image.verify",
                                   "options": {"quarantine": str(tmp_path / "quarantine")}},
                                  "image.convert"]
    config["train"]["epochs"] = 1
    outcome = run_pipeline(config)
    outcome.assert_success()
    data = outcome.report["data"]
    assert data["dropped"] == {"truncated_image": 1, "empty_file": 1, "not_an_image": 1,
                               "decompression_bomb": 1}
    assert data["bad"] == 4
    assert sum(data["counts"].values()) == 36 + len(added["valid_odd"])  # CMYK, RGBA, grey kept
    assert data["cleaners"]["0:image.verify"]["quarantined"] == 4
    assert (tmp_path / "quarantine" / "empty_file" / "square" / "empty.png").exists()
    converted = data["cleaners"]["1:image.convert"]
    assert converted["rewritten"] >= 2  # the CMYK and RGBA (and grey) files that were kept


def test_too_many_bad_files_stop_the_run_naming_the_reasons(image_host, run_pipeline, tmp_path,
                                                            add_bad_files):
    root = tmp_path / "shapes"
    write_folder(root, per_class=4, size=32, seed=3)
    add_bad_files(root)
    config = shapes_pipeline(root)
    config["train"]["epochs"] = 1
    outcome = run_pipeline(config)
    assert isinstance(outcome.error, privet.DataError)
    assert "max_bad_fraction" in str(outcome.error)


def test_group_norm_resnet_trains_with_small_batches(image_host, run_pipeline, tmp_path):
    root = tmp_path / "shapes"
    write_folder(root, per_class=16, size=16, seed=4)
    config = shapes_pipeline(root)
    config["data"]["augmenters"] = ["image.flip"]
    config["model"] = {"name": "image.resnet",
                       "options": {"norm": "group", "stem": "small", "input_size": 16}}
    config["train"].update(epochs=1, batch_size=4)
    outcome = run_pipeline(config)
    outcome.assert_success()
    assert outcome.report["steps"] >= 8
    assert outcome.report["final"]["val/loss"] == outcome.report["final"]["val/loss"]  # not NaN


def test_pretrained_path_loads_a_saved_state_dict_into_the_run(image_host, run_pipeline, tmp_path):
    from privet import load_trained

    root = tmp_path / "shapes"
    write_folder(root, per_class=10, size=32, seed=5)
    donor = image_host.make("model", "image.cnn", {"widths": [16, 32, 64]})
    donor.fit([{"label": str(i)} for i in range(5)])
    weights = donor.build().state_dict()
    torch.save(weights, tmp_path / "cnn.pt")
    config = shapes_pipeline(root, pretrained_path="cnn.pt")  # relative to the base folder
    config["train"].update(epochs=1, optimizer={"name": "sgd", "lr": 0.0})
    outcome = run_pipeline(config)
    outcome.assert_success()
    _model, module = load_trained(outcome.run_dir, host=image_host)
    trained = module.state_dict()
    assert torch.equal(trained["features.0.weight"], weights["features.0.weight"])  # lr 0: as loaded
    assert trained["fc.weight"].shape == (3, 64)  # new head for the 3 shapes


def test_a_missing_pretrained_file_fails_before_any_data_is_read(image_host, run_pipeline, tmp_path):
    root = tmp_path / "shapes"
    write_folder(root, per_class=2, size=32, seed=6)
    outcome = run_pipeline(shapes_pipeline(root, pretrained_path="weights/missing.pt"))
    assert isinstance(outcome.error, privet.ConfigError)
    assert "model.options.pretrained_path" in str(outcome.error)
    assert "missing.pt" in str(outcome.error) and "file not found" in str(outcome.error)
    assert not (tmp_path / "runs").exists()


def test_an_exported_run_predicts_a_folder_of_images(image_host, run_pipeline, tmp_path):
    import io
    import json

    from privet.export.bundle import export_run
    from privet.export.predict import predict_path

    root = tmp_path / "shapes"
    write_folder(root, per_class=10, size=32, seed=7)
    config = shapes_pipeline(root)
    config["data"]["cleaners"] = ["image.verify", "image.dedupe", "image.convert"]
    config["train"]["epochs"] = 1
    outcome = run_pipeline(config)
    outcome.assert_success()
    export_run(outcome.run_dir, host=image_host, formats=["torchscript"], log=None)
    bundle = outcome.run_dir / "export"
    assert json.loads((bundle / "labels.json").read_text()) == ["circle", "square", "triangle"]
    assert json.loads((bundle / "preprocessing.json").read_text())["input_size"] == 32
    inputs = tmp_path / "to_predict"
    inputs.mkdir()
    (inputs / "a.png").write_bytes((root / "circle" / "0000.png").read_bytes())
    (inputs / "same.png").write_bytes((root / "circle" / "0000.png").read_bytes())  # no dedupe here
    (inputs / "broken.png").write_bytes(b"junk")
    out = io.StringIO()
    summary = predict_path(bundle, inputs, out, host=image_host, trust_code=True)  # TorchScript
    entries = {e["location"]: e for e in map(json.loads, out.getvalue().splitlines())}
    assert summary.predicted == 2
    assert entries["a.png"]["label"] in ("circle", "square", "triangle")
    assert entries["a.png"]["probabilities"] == entries["same.png"]["probabilities"]
    assert entries["broken.png"]["error"] == "not_an_image"


def test_the_example_pipeline_runs_on_the_example_data(image_host, run_pipeline, tmp_path):
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, str(repo / "examples" / "make_image_data.py"),
                    "--out", str(tmp_path / "data" / "shapes"), "--per-class", "10"],
                   check=True, capture_output=True, timeout=60)
    config = yaml.safe_load((repo / "examples" / "image_shapes.yaml").read_text())
    outcome = run_pipeline(config, base_dir=tmp_path, overrides=[
        "train.epochs=1", "data.num_workers=0", "data.max_bad_fraction=0.2",
        "export.formats=[torchscript]"])
    outcome.assert_success()
    data = outcome.report["data"]
    assert data["dropped"] == {"truncated_image": 1, "empty_file": 1, "not_an_image": 1,
                               "decompression_bomb": 1, "duplicate": 1}
    assert sum(data["counts"].values()) == 30 + 3  # the CMYK, RGBA and grey files are kept
    assert (outcome.run_dir / "export" / "labels.json").exists()


def test_starter_pipeline_runs_as_written_and_takes_its_lr_from_the_model(image_host, run_pipeline, tmp_path):
    import yaml

    config = yaml.safe_load(plugin.starter_pipeline("image"))
    assert "lr" not in config["train"]["optimizer"]  # the model's default_lr() decides
    assert config["model"]["name"] == "image.cnn"
    model = image_host.make("model", "image.cnn", config["model"]["options"])
    assert model.default_lr() == pytest.approx(3e-3)
    write_folder(tmp_path / "data" / "images", per_class=8, size=64, seed=2)
    outcome = run_pipeline(config, overrides=["train.epochs=1", "export=null", "data.num_workers=0",
                                              "train.progress=none"])
    outcome.assert_success()
    assert outcome.report["data"]["counts"]["train"] > 0


def test_default_lr_is_lower_for_fine_tuning_and_for_transformers(image_host, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    scratch = image_host.make("model", "image.resnet", {}).default_lr()
    tuned = image_host.make("model", "image.resnet", {"pretrained_path": str(weights)}).default_lr()
    vit = image_host.make("model", "image.vit", {"variant": "b_32"}).default_lr()
    assert tuned < scratch and vit < scratch and 0 < tuned
