"""The data engine: bad records by reason, on_error, max_bad_fraction, the cache, sampling, sharding."""

from __future__ import annotations

import os
import json
import re
from collections import Counter

import pytest
import yaml

import privet
from engine_support import (TESTS, blobs_pipeline, checkpoints, jsonl_pipeline, kit, read_weights,
                            write_blobs_jsonl)

BAD_LINES = {3: "{not json", 10: "[1, 2]", 25: '{"x": [1.0, 2.0'}


def test_bad_and_filtered_records_are_counted_by_reason_with_their_lines(run, tmp_path):
    data = write_blobs_jsonl(tmp_path / "data.jsonl", 200, bad=BAD_LINES)
    raw = data.read_bytes().split(b"\n")
    raw[39:39] = [b"\xff\xfe not utf-8"]  # line 40
    data.write_bytes(b"\n".join(raw))
    labels = Counter(json.loads(line)["label"] for line in data.read_bytes().split(b"\n")
                     if line.startswith(b'{"x"') and line.endswith(b"}"))
    outcome = run(jsonl_pipeline(data, cleaners=[{"name": "kit.drop_label", "options": {"label": 2}}],
                                 max_bad_fraction=0.05))
    outcome.assert_success()
    d = outcome.report["data"]
    assert d["dropped"] == {"malformed_json": 2, "not_an_object": 1, "invalid_utf8": 1,
                            "unwanted_label": labels[2]}
    assert d["bad"] == 4, "records filtered on purpose are not bad"
    assert d["read"] == 204
    assert sum(d["counts"].values()) == 200 - labels[2]
    # each example is "FILE:LINE" (or "FILE record N" from a source that cannot tell lines),
    # then ": detail" when there is one
    where = {reason: [e.split(": ")[0] for e in found] for reason, found in d["dropped_examples"].items()}
    assert where["malformed_json"] == ["data.jsonl:3", "data.jsonl:25"]
    assert where["not_an_object"] == ["data.jsonl:10"]
    assert where["invalid_utf8"] == ["data.jsonl:40"]
    assert all(re.fullmatch(r"data\.jsonl:\d+", w) for w in where["unwanted_label"])
    assert d["dropped_examples"]["unwanted_label"][0].endswith(": label 2")


def test_a_cleaner_returning_none_is_counted_as_filtered_by_that_cleaner(run, tmp_path):
    data = write_blobs_jsonl(tmp_path / "data.jsonl", 90)
    drop_zeros = {"name": "kit.drop_label", "options": {"label": 0, "how": "none"}}
    outcome = run(jsonl_pipeline(data, cleaners=[drop_zeros]))
    outcome.assert_success()
    dropped = outcome.report["data"]["dropped"]
    assert list(dropped) == ["filtered_by_kit.drop_label"] and dropped["filtered_by_kit.drop_label"] > 0


def test_on_error_fail_stops_at_the_first_bad_record_naming_file_and_line(run, tmp_path):
    data = write_blobs_jsonl(tmp_path / "data.jsonl", 50, bad={7: "{oops"})
    outcome = run(jsonl_pipeline(data, on_error="fail"))
    assert isinstance(outcome.error, privet.DataError)
    message = str(outcome.error)
    assert message.startswith("data.jsonl:7: bad record: malformed_json")
    assert "data.on_error: drop" in message


@pytest.mark.slow
def test_too_many_bad_records_exit_2_with_one_line_from_the_cli(privet_cli, tmp_path):
    data = write_blobs_jsonl(tmp_path / "data.jsonl", 60, bad={2: "{", 4: "{", 6: "{"})
    config = jsonl_pipeline(data, max_bad_fraction=0.02)
    config["plugins"] = {"paths": [str(TESTS)]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    result = privet_cli("run", "pipeline.yaml")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("privet: error: 3 of 63 records are bad (4.8% > data.max_bad_fraction 0.02")
    assert "malformed_json: 3" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    report = json.loads((tmp_path / "runs" / "jsonl" / "report.json").read_text())
    assert report["status"] == "failed" and "max_bad_fraction" in report["error"]


def test_a_second_run_reuses_the_prepared_cache_until_the_data_changes(run, tmp_path):
    data = write_blobs_jsonl(tmp_path / "data.jsonl", 80)
    first = run(jsonl_pipeline(data))
    second = run(jsonl_pipeline(data), overrides=["train.optimizer.lr=0.01", "data.num_workers=0"])
    first.assert_success()
    second.assert_success()
    assert first.report["data"]["cache_reused"] is False
    assert second.report["data"]["cache_reused"] is True
    assert second.report["data"]["cache"] == first.report["data"]["cache"]
    assert second.report["data"]["counts"] == first.report["data"]["counts"]

    write_blobs_jsonl(data, 81)  # new content: a new fingerprint
    third = run(jsonl_pipeline(data))
    changed_cleaning = run(jsonl_pipeline(data, cleaners=["tiny.scale"]))
    assert third.report["data"]["cache_reused"] is False
    assert third.report["data"]["cache"] != first.report["data"]["cache"]
    assert changed_cleaning.report["data"]["cache_reused"] is False


def test_balanced_sampler_draws_classes_about_equally_from_skewed_data(run, host):
    captured = []

    class Capture:
        @privet.hookimpl
        def before_run(self, run):
            captured.append(run.components.model)

    host.register_plugin(Capture(), "capture")
    config = {
        "name": "skewed", "seed": 1,
        "data": {"source": {"name": "kit.skewed", "options": {"n": 630}}, "sampler": "balanced"},
        "model": "kit.probe",
        "train": {"epochs": 3, "batch_size": 32, "device": "cpu", "progress": "none"},
    }
    outcome = run(config)
    outcome.assert_success()
    seen = Counter(captured[0].seen_labels)
    total = sum(seen.values())
    assert total == 3 * outcome.report["data"]["counts"]["train"]
    for label in range(3):
        assert seen[label] / total == pytest.approx(1 / 3, abs=0.05), seen
    # without balancing, the minority class is 1/21 of what the model sees
    captured.clear()
    config["data"]["sampler"] = "shuffle"
    run(config).assert_success()
    plain = Counter(captured[0].seen_labels)
    assert plain[2] / sum(plain.values()) == pytest.approx(1 / 21, abs=0.02)


class _IdModel(kit.Probe):
    """Encodes a record as its id, to see which examples a loader delivers."""

    def encode(self, record):
        return int(record["id"])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_example_is_seen_once_per_epoch_across_ranks_and_workers(tmp_path, world_size):
    from privet.data.arrow import ArrowShardWriter, ArrowTable
    from privet.data.loader import EpochBatchSampler, make_loader

    n = 101
    writer = ArrowShardWriter(tmp_path, "train", shard_rows=17)  # several shard files
    for i in range(n):
        writer.add({"id": i, "x": [float(i)]})
    table = ArrowTable(writer.close())
    assert len(table.files) == 6
    model = _IdModel()
    for epoch in (0, 1):
        per_rank = []
        lengths = set()
        for rank in range(world_size):
            loader = make_loader(table, model, [], batch_size=8, seed=3, train=True, shuffle=True,
                                 num_workers=2, rank=rank, world_size=world_size)
            sampler = loader.batch_sampler
            assert isinstance(sampler, EpochBatchSampler)
            sampler.set_epoch(epoch)
            batches = [b.batch.tolist() for b in loader]
            assert len(batches) == len(loader)
            lengths.add(len(batches))
            per_rank.append([i for b in batches for i in b])
        seen = Counter(i for ids in per_rank for i in ids)
        assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}, f"epoch {epoch}"
        assert len(lengths) == 1, "every rank takes the same number of steps"
    assert per_rank[0] != sorted(per_rank[0]), "shuffled"


def test_a_sampler_started_mid_epoch_yields_exactly_the_remaining_batches():
    from privet.data.loader import EpochBatchSampler

    sampler = EpochBatchSampler(50, 8, seed=4, shuffle=True)
    def batches():
        return [(b.epoch, b.indices.tolist()) for b in sampler]

    sampler.set_epoch(2)
    full = batches()
    sampler.set_epoch(2, start_batch=3)
    assert batches() == full[3:]
    sampler.set_epoch(3)
    assert batches() != full


def test_augmentation_gives_the_same_run_with_or_without_worker_processes(run):
    import torch

    def train(workers: int, augment: bool):
        config = blobs_pipeline(epochs=2)
        config["data"]["num_workers"] = workers
        if augment:
            config["data"]["augmenters"] = [{"name": "kit.jitter", "options": {"sigma": 0.2}}]
        outcome = run(config)
        outcome.assert_success()
        return outcome, read_weights(checkpoints(outcome.run_dir)[-1] / "model.safetensors")

    in_process, w0 = train(0, True)
    in_workers, w2 = train(2, True)
    plain, w_plain = train(0, False)
    for name in w0:
        assert torch.equal(w0[name], w2[name]), name
    assert in_process.report["history"] == in_workers.report["history"]
    assert any(not torch.equal(w0[n], w_plain[n]) for n in w0), "the augmenter changed training"
    assert in_workers.report["data"]["cache_reused"] is True, "augmenters are not part of the cache"


# -- preparation, driven directly: sources, cleaners, the cache ----------------------------------

class _Plain(privet.Model):
    """A model that only takes part in preparation (nothing here trains)."""

    def build(self):
        raise NotImplementedError

    def encode(self, record):
        raise NotImplementedError

    def step(self, module, batch):
        raise NotImplementedError


def _preparer(source, cleaners=(), **data):
    from privet.config import ComponentSpec, DataConfig
    from privet.data.prepare import Preparer

    config = DataConfig(source=ComponentSpec("test"), **data)
    return Preparer(config, source, list(cleaners), _Plain(), seed=1, fingerprint_extra={})


class _Duplicates(privet.Source):
    """40 items: every 4th a duplicate the source leaves out on purpose (or as bad input)."""

    name = "test.duplicates"

    def __init__(self, bad: bool = False) -> None:
        super().__init__()
        self.bad = bad

    def shards(self):
        return [privet.Shard("memory")]

    def files(self):
        return []

    def read(self, shard):
        for i in range(40):
            if i % 4 == 0:
                yield privet.DropRecord("duplicate", f"same as item {i + 1}", bad=self.bad)
            else:
                yield {"x": [float(i)], "label": i % 2}


def test_a_source_drops_a_record_on_purpose_without_it_counting_as_bad(tmp_path):
    prepared = _preparer(_Duplicates(), max_bad_fraction=0.0).prepare(tmp_path / "cache")

    meta = prepared.meta
    assert meta["dropped"] == {"duplicate": 10} and meta["bad"] == 0
    assert sum(meta["counts"].values()) == 30
    assert meta["dropped_examples"]["duplicate"][0] == "memory record 1: same as item 1"
    with pytest.raises(privet.DataError, match="10 of 40 records are bad"):
        _preparer(_Duplicates(bad=True), max_bad_fraction=0.0).prepare(tmp_path / "cache2")


class _Counting(privet.Cleaner):
    """Counts the records it changes, like text.redact_pii counts replacements."""

    name = "test.counting"

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.changed = Counter()

    def clean(self, record):
        if record["label"] == 1:
            self.changed["ONE"] += 1
        return record

    def report(self):
        return dict(self.changed)


class _Fitting(privet.Cleaner):
    """Needs a fitting pass over the training records (which runs the earlier cleaners)."""

    name = "test.fitting"
    needs_fit = True

    def fit(self, records):
        self.seen = sum(1 for _ in records)

    def clean(self, record):
        return record


def test_cleaner_counts_are_those_of_the_records_written_whatever_the_fitting_passes(tmp_path):
    counting = _Counting()
    prepared = _preparer(_Duplicates(), [counting, _Fitting(), _Fitting()]).prepare(tmp_path / "c")

    ones = sum(1 for i in range(40) if i % 4 and i % 2 == 1)
    assert counting.changed["ONE"] > ones, "the fitting passes did run the counting cleaner"
    assert prepared.meta["cleaners"] == {"0:test.counting": {"ONE": ones}}


PLUGIN = '''
import privet


class Upper(privet.Cleaner):
    """Upper-cases the label (version VERSION)."""

    def clean(self, record):
        return {**record, "label": str(record["label"]).upper()}


@privet.hookimpl
def register_cleaners(register):
    register("local.upper", Upper)
'''


def test_a_changed_plugin_dir_cleaner_is_a_new_cache(tmp_path):
    from privet.testing import make_test_host

    data = write_blobs_jsonl(tmp_path / "data.jsonl", 30)
    plugin = tmp_path / "plugins" / "local_upper.py"
    plugin.parent.mkdir()

    def prepare(version: str):
        plugin.write_text(PLUGIN.replace("VERSION", version))
        host = make_test_host()
        host.load_path(plugin.parent)
        source = host.make("source", "jsonl", {"paths": [str(data)]})
        cleaner = host.make("cleaner", "local.upper")
        return _preparer(source, [cleaner]).prepare(tmp_path / "cache")

    first, same, changed = prepare("1"), prepare("1"), prepare("2")
    assert (first.reused, same.reused, changed.reused) == (False, True, False)
    assert changed.fingerprint != first.fingerprint
    code = {c["component"]: c for c in changed.meta["code"]}
    assert code["privet_local_plugins.local_upper.Upper"]["source_sha256"]
    assert code["privet.builtins.sources.JsonLines"]["version"] == privet.__version__


SLOW_PLUGIN = '''
import os
import time
from pathlib import Path

import privet


class Slow(privet.Cleaner):
    """Writes a marker at the 30th record, then hangs while PRIVET_TEST_HANG is set."""

    seen = 0

    def clean(self, record):
        marker = os.environ.get("PRIVET_TEST_HANG")
        Slow.seen += 1
        if marker and Slow.seen == 30:
            Path(marker).write_text("preparing")
        if marker and Slow.seen >= 30:
            time.sleep(60)
        return record


@privet.hookimpl
def register_cleaners(register):
    register("slow.hang", Slow)
'''


@pytest.mark.slow
def test_a_run_killed_while_preparing_leaves_no_cache_that_looks_complete(privet_cli, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from engine_support import launcher

    data = write_blobs_jsonl(tmp_path / "data.jsonl", 120)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "slow.py").write_text(SLOW_PLUGIN)
    config = jsonl_pipeline(data, cleaners=["slow.hang"], shard_rows=10)
    config["plugins"] = {"paths": [str(TESTS), str(tmp_path / "local")]}
    config["runs_dir"] = str(tmp_path / "runs")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    marker = tmp_path / "hanging"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    env.update(PRIVET_LOAD_PLUGINS="", PRIVET_TEST_HANG=str(marker))
    proc = subprocess.Popen([*launcher(), "run", "pipeline.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the run never reached the slow cleaner"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    cache_root = tmp_path / "runs" / ".cache"
    partial = [p for p in cache_root.iterdir() if p.name.startswith(".tmp-")]
    assert partial and list(partial[0].glob("records/train-*.arrow")), "killed mid-writing"
    assert not [p for p in cache_root.iterdir() if not p.name.startswith(".")], \
        "no folder under its final name"

    again = privet_cli("run", "pipeline.yaml")  # same data and code: the same fingerprint
    assert again.returncode == 0, again.stderr
    reports = sorted((tmp_path / "runs").glob("*/report.json"))
    report = json.loads(reports[-1].read_text())
    assert report["data"]["cache_reused"] is False, "prepared again, not reused half-written"
    assert sum(report["data"]["counts"].values()) == 120
    assert [p.name for p in cache_root.iterdir()] == [report["data"]["cache"].rsplit("/", 1)[-1]]


def test_cache_shards_reach_the_disk_by_folder_before_meta_json_marks_the_cache_complete(tmp_path, monkeypatch):
    """One fsync per folder, not per shard, and every folder's before the marker."""
    import privet.storage as storage

    events: list[str] = []
    monkeypatch.setattr(storage, "_fsync_dir", lambda path: events.append(f"fsync {path.name}"))
    real_write_json = storage.Storage.write_json

    def write_json(self, rel, value):
        events.append(f"write {rel}")
        return real_write_json(self, rel, value)

    monkeypatch.setattr(storage.Storage, "write_json", write_json)
    prepared = _preparer(_Duplicates(), shard_rows=4).prepare(tmp_path / "cache")

    assert len(prepared.meta["record_files"]["train"]) > 3  # several shards per folder
    marker = events.index("write meta.json")
    before = events[:marker]
    assert before.count("fsync records") == 1 and "fsync examples" not in events[marker:]
    assert before.count(f"fsync .tmp-{prepared.fingerprint}-{os.getpid()}") == 1
