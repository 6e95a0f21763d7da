"""Under torchrun every rank cleans its share of the shards, and the prepared cache is the
one a single process with one worker makes."""

from __future__ import annotations

import importlib.util
import json
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

import privet
from privet.builtins.sources import JsonLines
from privet.config import ComponentSpec, DataConfig, SplitConfig
from privet.data.parallel import parallel_prefix
from privet.data.prepare import Preparer
from privet.data.ranks import serve



def _torchrun_helpers():
    """The torchrun tests' helpers (tests are imported by path: --import-mode=importlib)."""
    name = "privet_dist_tests_torchrun"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_torchrun.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_helpers = _torchrun_helpers()
TESTS, env_for, standalone = _helpers.TESTS, _helpers.env_for, _helpers.standalone


def _module(name: str, path: Path):
    """Another test module's corpus and components (imported by path, like the helpers)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_par = _module("privet_prepare_parallel_tests", TESTS / "engine" / "test_prepare_parallel.py")


class _Wire:
    """In-memory stand-in for the store and the gloo group between ranks (threads here):
    small bounded queues, so a rank blocks in ``send`` as it does on a full socket."""

    def __init__(self, world: int) -> None:
        self.commands = {r: queue.Queue() for r in range(1, world)}
        self.data = {r: queue.Queue(maxsize=2) for r in range(1, world)}
        self.abandoned: set[int] = set()
        self.sent: set[str] = set()


class _Link:
    """RankLink's interface over a _Wire; messages are pickled as they would be on the wire."""

    ok = True

    def __init__(self, wire: _Wire, rank: int, world: int) -> None:
        self.wire, self.rank, self.world_size = wire, rank, world
        self.stopped = False

    def post(self, command):
        for r in range(1, self.world_size):
            self.wire.commands[r].put(pickle.dumps(command(r)))

    def next_command(self):
        return pickle.loads(self.wire.commands[self.rank].get(timeout=60))

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self.post(lambda r: ("stop",))

    def abandon(self, pass_id):
        self.wire.abandoned.add(pass_id)

    def abandoned(self, pass_id):
        return pass_id in self.wire.abandoned

    def send(self, message):
        if message[2] == "chunk":  # the kinds of items this rank sent (for the tests)
            self.wire.sent.update(item[0] for item in message[3])
        self.wire.data[self.rank].put(pickle.dumps(message), timeout=60)

    def recv(self, src):
        return pickle.loads(self.wire.data[src].get(timeout=60))


def _cleaners():
    return [_Head(), _par._Centre(), _par._Screen(), _par._FirstSeen(), _par._Shout()]


class _Head(privet.Cleaner):
    """Fits on the first few training records and stops reading: the pass is abandoned."""

    name = "test.head"
    needs_fit = True

    def fit(self, records):
        for i, _record in enumerate(records):
            if i == 4:
                break

    def clean(self, record):
        return record


def _with_ranks(data: Path, cache: Path, world: int, cleaners, source_cls=JsonLines, model=None,
                **options):
    """Rank 0 prepares in this thread, ranks 1.. serve in threads; returns (prepared, served)."""
    wire = _Wire(world)
    served: dict[int, object] = {"wire": wire}

    def rank(r: int) -> None:
        source = source_cls(source_cls.Options(paths=[data]))
        mine = cleaners()
        try:
            served[r] = serve(_Link(wire, r, world), source, mine, parallel_prefix(mine), 1)
        except BaseException as err:  # noqa: BLE001 - checked by the test
            served[r] = err

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(1, world)]
    for t in threads:
        t.start()
    link = _Link(wire, 0, world)
    source = source_cls(source_cls.Options(paths=[data]))
    config = DataConfig(source=ComponentSpec("jsonl"), prepare_workers=1, max_bad_fraction=0.5,
                        shard_rows=30, **options)
    preparer = Preparer(config, source, cleaners(), model or _par._Plain(), seed=3,
                        fingerprint_extra={}, ranks=link)
    try:
        return preparer.prepare(cache), served
    finally:
        link.stop()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a rank did not stop"


def test_ranks_clean_their_shards_and_rank_0_writes_the_cache_of_one_process(tmp_path):
    data = _par._corpus(tmp_path / "data")  # 5 files: shards 0, 3 -> rank 0; 1, 4 -> 1; 2 -> 2
    one, _ = _par._prepare(data, tmp_path / "c1", workers=1, cleaners=_cleaners())
    three, served = _with_ranks(data, tmp_path / "c3", 3, _cleaners)

    assert three.meta["ranks"] == [2, 2, 1] and "ranks" not in one.meta
    assert served[1] > served[2] > 0  # shards cleaned over every pass, fitting passes too
    files = _par._files(one.cache.root)
    assert len(files) > 3 and files == _par._files(three.cache.root)
    strip = lambda m: {k: v for k, v in m.items() if k not in (*_par._VARYING, "ranks")}  # noqa: E731
    assert strip(one.meta) == strip(three.meta)
    assert one.meta["dropped"]["too_odd"] > 0 and one.meta["cleaner_states"][1] != {"mean": 0.0}


def test_ranks_send_the_tables_of_the_columnar_path_and_rank_0_writes_the_same_cache(tmp_path):
    col = _module("privet_prepare_columnar_tests", TESTS / "engine" / "test_prepare_columnar.py")
    data = col._corpus(tmp_path / "data")  # a clean file, a screened one, two the source declines
    clean, screened = data / "part-0.jsonl", data / "part-1.jsonl"
    text = clean.read_text()
    clean.write_text(screened.read_text())
    screened.write_text(text)  # rank 1 gets the clean file (shard 1): a whole table to send
    split = SplitConfig(method="field", field="split")
    cleaners = lambda: [col._Centre(), col._Screen()]  # noqa: E731
    one, _, _ = col._prepare(data, tmp_path / "c1", col._TableJsonl, split=split)
    two, served = _with_ranks(data, tmp_path / "c2", 2, cleaners, col._TableJsonl, col._Longest(),
                              split=split)

    assert two.meta["ranks"] == [2, 2] and served[1] > 0
    assert served["wire"].sent >= {"tab", "rec"}  # rank 1 sent a table and records
    assert {s: list(t.iter_rows()) for s, t in one.tables.items()} == \
        {s: list(t.iter_rows()) for s, t in two.tables.items()}
    for key in ("dropped", "counts", "cleaners", "cleaner_states", "model_state"):
        assert one.meta[key] == two.meta[key], key


def test_a_cleaner_error_on_another_rank_is_raised_by_rank_0_and_every_rank_stops(tmp_path):
    data = _par._corpus(tmp_path / "data", files=3, lines=40)  # n=70 is in part-1: rank 1's
    with pytest.raises(ValueError, match="cleaner bug at n=70") as err:
        _with_ranks(data, tmp_path / "c", 2, lambda: [_par._Exploding()])
    assert any("preparation worker" in note for note in getattr(err.value, "__notes__", []))
    assert not list((tmp_path / "c").glob("*/meta.json"))


@pytest.mark.slow


def _data(folder: Path) -> Path:
    folder.mkdir()
    n = 0
    for f in range(4):
        lines = []
        for _ in range(50):
            n += 1
            lines.append(json.dumps({"x": [((n * 7 + k) % 13) / 3.0 for k in range(8)], "label": n % 3})
                         if n % 31 else "{broken")
        (folder / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _pipeline(tmp: Path, data: Path) -> Path:
    config = {
        "name": "prep", "seed": 5, "runs_dir": str(tmp / "runs"),
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "jsonl", "options": {"paths": [str(data)]}},
                 "cleaners": ["tiny.scale"], "prepare_workers": 2, "shard_rows": 40,
                 "max_bad_fraction": 0.2},
        "model": {"name": "tiny.mlp"},
        "train": {"epochs": 1, "batch_size": 16, "progress": "none"},
    }
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cache(run_dir: Path) -> tuple[dict[str, bytes], dict]:
    cache = (run_dir / "cache").resolve()
    meta = json.loads((cache / "meta.json").read_text())
    files = {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*.arrow"))}
    return files, {k: v for k, v in meta.items() if k not in ("created", "seconds", "workers", "timings", "ranks")}


def test_two_ranks_share_the_shards_and_prepare_the_cache_of_one_process(tmp_path):
    data = _data(tmp_path / "data")
    pipeline = _pipeline(tmp_path, data)
    standalone(tmp_path, 2, pipeline, "--name", "ranks")
    subprocess.run([sys.executable, "-m", "privet", "run", str(pipeline), "--name", "single",
                    "-s", "data.prepare_workers=1", "-s", f"runs_dir={tmp_path / 'runs-single'}"],
                   env=env_for(tmp_path), check=True, capture_output=True, timeout=240)

    ranks_files, ranks_meta = _cache(tmp_path / "runs" / "ranks")
    single_files, single_meta = _cache(tmp_path / "runs-single" / "single")
    meta = json.loads(((tmp_path / "runs" / "ranks" / "cache").resolve() / "meta.json").read_text())
    # shard i goes to rank i % 2: rank 1 cleaned part-1 and part-3 and sent them to rank 0
    assert meta["ranks"] == [2, 2] and meta["workers"] == 2
    assert "ranks" not in json.loads(((tmp_path / "runs-single" / "single" / "cache").resolve()
                                      / "meta.json").read_text())
    assert len(ranks_files) >= 3 and ranks_files == single_files
    assert ranks_meta == single_meta and ranks_meta["dropped"] == {"malformed_json": 6}
