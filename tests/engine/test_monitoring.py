"""What a run leaves to read: TensorBoard scalars and hparams, report.json, manifest.json."""

from __future__ import annotations

import hashlib
import json
import math
import platform
from pathlib import Path

import pytest

import privet
from engine_support import blobs_pipeline, jsonl_pipeline, write_blobs_jsonl


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_tensorboard_scalars_and_hparams_read_back(run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = blobs_pipeline(epochs=2, log_every_n_steps=5, clip_grad_norm=5.0, scheduler="cosine",
                            optimizer={"lr": 0.01})
    outcome = run(config)
    outcome.assert_success()
    report = outcome.report
    total = report["steps"]
    per_epoch = total // 2
    events = _events(outcome.run_dir / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s",
            "val/loss", "val/accuracy", "val/f1"} <= scalars
    assert "train/accuracy" not in scalars  # training logs its loss only: metrics cost per step

    logged_steps = sorted(set(range(5, total + 1, 5)) | {total})
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"):
        assert [e.step for e in events.Scalars(tag)] == logged_steps, tag
    for e in events.Scalars("train/lr"):  # cosine annealing over the whole run, stepped per batch
        expected = 0.01 * (1 + math.cos(math.pi * e.step / total)) / 2
        assert e.value == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert all(0 < e.value < 5 * 20 and math.isfinite(e.value) for e in events.Scalars("train/grad_norm"))
    assert all(e.value > 0 for e in events.Scalars("train/samples_per_s"))
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses[-1] < losses[0]

    val = events.Scalars("val/loss")
    assert [e.step for e in val] == [per_epoch, 2 * per_epoch]
    assert [e.value for e in val] == pytest.approx([h["val/loss"] for h in report["history"]], rel=1e-6)

    hp = _events(outcome.run_dir / "tensorboard" / "hparams")
    content = hp.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["lr"].number_value == pytest.approx(0.01)
    assert values["batch_size"].number_value == 16
    assert values["model"].string_value == "tiny.mlp"
    assert values["precision"].string_value == "fp32"
    best = hp.Scalars("hparam/val/loss")
    assert best[0].value == pytest.approx(report["best"]["val/loss"], rel=1e-6)


def test_report_json_holds_status_metrics_data_counts_and_timings(run):
    outcome = run(blobs_pipeline(epochs=2))
    outcome.assert_success()
    report = outcome.report
    on_disk = json.loads((outcome.run_dir / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    data = report["data"]
    train = data["counts"]["train"]
    assert report["status"] == "completed"
    assert report["epochs"] == 2 and report["world_size"] == 1 and report["global_batch"] == 16
    assert report["steps"] == 2 * -(-train // 16)
    assert report["samples_seen"] == 2 * train
    assert report["skipped_steps"] == 0
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["final"] == {k: v for k, v in report["history"][-1].items() if k != "epoch"}
    assert set(report["final"]) == {"val/loss", "val/accuracy", "val/f1"}
    assert report["best"] == min(report["history"], key=lambda h: h["val/loss"])
    assert report["monitor"] == "val/loss"
    assert data["read"] == 240 and sum(data["counts"].values()) == 240
    assert data["counts"]["val"] > 0 and data["counts"]["test"] == 0
    assert data["examples"] == data["counts"]
    assert data["dropped"] == {} and data["bad"] == 0 and data["dropped_in_training"] == {}
    assert data["cache_reused"] is False
    assert (outcome.run_dir / "cache").resolve() == Path(data["cache"]).resolve()
    assert set(report["timings"]) == {"prepare_s", "train_s", "total_s"}
    assert 0 <= report["timings"]["train_s"] <= report["timings"]["total_s"]


def test_manifest_json_records_config_data_plugins_and_host(run, tmp_path):
    import torch

    data_file = write_blobs_jsonl(tmp_path / "data.jsonl", 120)
    outcome = run(jsonl_pipeline(data_file))
    outcome.assert_success()
    again = run(jsonl_pipeline(data_file))
    other = run(jsonl_pipeline(data_file), overrides=["train.optimizer.lr=0.5"])
    manifests = [json.loads((o.run_dir / "manifest.json").read_text()) for o in (outcome, again, other)]
    manifest = manifests[0]

    assert manifest["data_files"] == [{"path": str(data_file), "size": data_file.stat().st_size,
                                       "sha256": hashlib.sha256(data_file.read_bytes()).hexdigest(),
                                       "partial": False}]
    assert len(manifest["config_hash"]) == 64
    assert manifests[1]["config_hash"] == manifest["config_hash"] != manifests[2]["config_hash"]
    plugins = {p["name"]: p for p in manifest["plugins"]}
    assert plugins["kit"]["status"] == plugins["tinyplugin"]["status"] == "loaded"
    assert plugins["privet.builtins.sources"]["version"] == privet.__version__
    assert manifest["torch"] == torch.__version__
    assert manifest["python"] == platform.python_version()
    assert manifest["world_size"] == 1 and manifest["global_batch"] == 16
    assert manifest["pipeline_dir"] == str(tmp_path)
    assert manifest["data_cache"] == outcome.report["data"]["cache"]
    assert manifest["user"] and manifest["host"]
    assert manifest["started"] <= manifest["ended"]


def test_buffered_scalars_keep_their_time_and_reach_the_file_on_flush_and_close(tmp_path):
    import time

    from privet.monitor.tensorboard import Scalars

    scalars = Scalars(tmp_path / "a", flush_secs=3600)
    scalars.log({"train/loss": 1.5}, 1)
    time.sleep(0.3)
    scalars.log({"train/loss": 1.25, "train/lr": 0.1}, 2)
    scalars.flush()
    flushed = _events(tmp_path / "a")
    assert [(e.step, e.value) for e in flushed.Scalars("train/loss")] == [(1, 1.5), (2, 1.25)]
    first, second = flushed.Scalars("train/loss")
    assert second.wall_time - first.wall_time >= 0.25, "logged time, not the time of the flush"
    scalars.log({"train/loss": 1.0}, 3)
    scalars.close()
    assert [e.step for e in _events(tmp_path / "a").Scalars("train/loss")] == [1, 2, 3]

    eager = Scalars(tmp_path / "b", flush_secs=0)  # every log goes straight to the file
    eager.log({"val/loss": 0.5}, 7)
    assert [(e.step, e.value) for e in _events(tmp_path / "b").Scalars("val/loss")] == [(7, 0.5)]
    eager.close()
