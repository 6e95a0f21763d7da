"""Distributed training on CPU with gloo, through real torchrun processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pipeline(tmp: Path, **train: object) -> Path:
    config = {
        "name": "dist",
        "seed": 3,
        "runs_dir": str(tmp / "runs"),
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "tiny.blobs", "options": {"n": 600}}},
        "model": {"name": "tiny.mlp", "options": {"dropout": 0.2}},
        "train": {"epochs": 3, "batch_size": 8, "deterministic": True, "progress": "none",
                  "checkpoint": {"every_n_steps": 10, "keep_last": 2}, **train},
    }
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("KILL_MARKER", "IDLOG_DIR", "PRIVET_PLUGIN_PATHS"):
        env.pop(key, None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    # the head of stderr holds the workers' own errors, its tail torchrun's summary
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[:6000] + proc.stderr[-3000:]
    return proc


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    steps = sorted((run_dir / "checkpoints").glob("step-*"))
    return load_file(str(run_dir / "best" / "model.safetensors")) if not steps or (
        steps[-1] / "sharded").exists() else load_file(str(steps[-1] / "model.safetensors"))


def standalone(tmp: Path, nproc: int, pipeline: Path, *args: str, env=None, restarts: int = 0) -> Path:
    run(TORCHRUN + ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={restarts}", "-m", "privet",
                    "--plugin-dir", str(PLUGINS), "run", str(pipeline), *args], env or env_for(tmp))
    return pipeline.parent / "runs"


def test_two_processes_match_one_with_the_same_global_batch_and_see_each_record_once(tmp_path):
    pipeline = write_pipeline(tmp_path)
    logs = tmp_path / "ids"
    logs.mkdir()
    # no dropout here: ranks draw masks for their own rows, one process for all of them
    standalone(tmp_path, 2, pipeline, "--name", "ddp", "-s", "model.options.dropout=0.0",
               env=env_for(tmp_path, IDLOG_DIR=str(logs)))
    subprocess.run([sys.executable, "-m", "privet", "run", str(pipeline), "--name", "single",
                    "-s", "train.batch_size=16", "-s", "model.options.dropout=0.0"], env=env_for(tmp_path), check=True,
                   capture_output=True, timeout=240)
    runs = tmp_path / "runs"
    ddp = json.loads((runs / "ddp" / "report.json").read_text())
    single = json.loads((runs / "single" / "report.json").read_text())
    assert ddp["world_size"] == 2 and ddp["global_batch"] == 16 == single["global_batch"]
    assert ddp["steps"] == single["steps"]
    for a, b in zip(ddp["history"], single["history"]):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4, abs=1e-6)
    wa, wb = final_weights(runs / "ddp"), final_weights(runs / "single")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
    # instrumented: every training example exactly once per epoch over both ranks
    n_train = ddp["data"]["examples"]["train"]
    seen: dict[int, Counter] = {}
    for rank in (0, 1):
        assert (logs / f"before_run.rank{rank}").read_text() == "2"
        for line in (logs / f"rank{rank}.txt").read_text().split("\n"):
            if line:
                epoch, index = map(int, line.split())
                seen.setdefault(epoch, Counter())[index] += 1
    assert sorted(seen) == [0, 1, 2]
    for epoch, counts in seen.items():
        assert set(counts) == set(range(n_train)), epoch
        assert max(counts.values()) == 1, epoch


def test_simulated_two_node_job_survives_a_killed_worker_bit_identically(tmp_path):
    pipeline = write_pipeline(tmp_path)
    reference = standalone(tmp_path, 2, pipeline, "--name", "reference")
    port = free_port()
    marker = tmp_path / "killed"
    env = env_for(tmp_path, KILL_MARKER=str(marker), KILL_EPOCH="1", KILL_RANK="1")
    agent = TORCHRUN + ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=privet-test-job",
                        "--max-restarts=3", "-m", "privet", "--plugin-dir", str(PLUGINS),
                        "run", str(pipeline), "--name", "elastic"]
    results: list[subprocess.CompletedProcess] = []
    other = threading.Thread(target=lambda: results.append(
        subprocess.run(agent, env=env, capture_output=True, text=True, timeout=300)))
    other.start()
    mine = subprocess.run(agent, env=env, capture_output=True, text=True, timeout=300)
    other.join()
    for proc in [mine, *results]:
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert marker.exists(), "the worker was never killed"
    report = json.loads((reference / "elastic" / "report.json").read_text())
    assert report["status"] == "completed"
    wa = final_weights(reference / "elastic")
    wb = final_weights(reference / "reference")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_fsdp2_trains_and_resumes_from_its_sharded_checkpoint(tmp_path):
    pipeline = write_pipeline(tmp_path, strategy="fsdp")
    marker = tmp_path / "killed"
    env = env_for(tmp_path, KILL_MARKER=str(marker), KILL_EPOCH="1", KILL_RANK="1")
    runs = standalone(tmp_path, 2, pipeline, "--name", "fsdp", env=env, restarts=2)
    assert marker.exists()
    run_dir = runs / "fsdp"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["world_size"] == 2
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    assert (last / "sharded" / ".metadata").exists() and (last / "state.json").exists()
    assert report["final"]["val/accuracy"] > 0.9
    ddp_runs = standalone(tmp_path, 2, pipeline, "--name", "ddp", "-s", "train.strategy=ddp")
    ddp = json.loads((ddp_runs / "ddp" / "report.json").read_text())
    assert report["final"]["val/loss"] == pytest.approx(ddp["final"]["val/loss"], rel=1e-3)


def test_fsdp2_with_encryption_seals_every_shard_and_resumes_after_a_killed_worker(tmp_path):
    from privet.crypto import is_encrypted, new_key_text

    pipeline = write_pipeline(tmp_path, strategy="fsdp")
    config = yaml.safe_load(pipeline.read_text())
    config["security"] = {"encryption": {"key": "env:PRIVET_KEY"}}
    pipeline.write_text(yaml.safe_dump(config))
    marker = tmp_path / "killed"
    env = env_for(tmp_path, KILL_MARKER=str(marker), KILL_EPOCH="1", KILL_RANK="1",
                  PRIVET_KEY=new_key_text())
    runs = standalone(tmp_path, 2, pipeline, "--name", "sealed", env=env, restarts=2)
    assert marker.exists()
    run_dir = runs / "sealed"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["final"]["val/accuracy"] > 0.9
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    files = [p for p in (last / "sharded").iterdir()] + [last / "state.pt", last / "state.json"]
    assert any(p.name == ".metadata" for p in files) and len(files) >= 5  # metadata + 2 shards
    for path in files:
        assert is_encrypted(path.read_bytes()), path
        assert path.stat().st_mode & 0o077 == 0, path
