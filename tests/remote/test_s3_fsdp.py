"""Sharded (FSDP2) checkpoints on ``s3://``: every rank uploads its own shard files (sealed
in an encrypted run), rank 0 the metadata and the marker last; a worker killed mid-run is
restarted by torchrun and the job continues the same run from the newest marked step in
the bucket, every rank fetching every shard of it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))  # torchrun helpers

from remote_support import SECRET_KEY  # noqa: E402
from test_torchrun import env_for, standalone, write_pipeline  # noqa: E402

pytestmark = pytest.mark.slow


def test_sealed_fsdp_checkpoints_to_s3_survive_a_killed_worker(s3, tmp_path):
    from privet.crypto import is_encrypted, new_key_text

    pipeline = write_pipeline(tmp_path, strategy="fsdp")
    config = yaml.safe_load(pipeline.read_text())
    config["runs_dir"] = s3.url("runs")
    config["train"]["epochs"] = 2
    config["security"] = {"encryption": {"key": "env:PRIVET_KEY"}}  # shards sealed, then uploaded
    pipeline.write_text(yaml.safe_dump(config))
    marker = tmp_path / "killed"
    env = env_for(tmp_path, KILL_MARKER=str(marker), KILL_EPOCH="0", KILL_RANK="1",
                  PRIVET_KEY=new_key_text(), **s3.env)
    local_runs = standalone(tmp_path, 2, pipeline, "--name", "fsdp", env=env, restarts=2)
    assert marker.exists()  # rank 1 was killed after epoch 0 ...

    keys = s3.keys("runs/")
    assert {k.split("/")[1] for k in keys} == {"fsdp"}, keys  # ... and the job went on in its run
    report = json.loads(s3.get("runs/fsdp/report.json"))
    assert report["status"] == "completed" and report["world_size"] == 2
    assert report["final"]["val/accuracy"] > 0.9
    steps = sorted({k.split("/")[3] for k in keys if "/checkpoints/step-" in k})
    assert len(steps) == 2, steps  # keep_last, pruned on the store too
    for step in steps:
        files = {k.split(f"{step}/", 1)[1] for k in keys if f"/{step}/" in k}
        assert files == {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp",
                         "state.pt", "state.json"}, files
        for name in files:  # the bucket holds ciphertext only
            assert is_encrypted(s3.get(f"runs/fsdp/checkpoints/{step}/{name}")), (step, name)
    assert not any(".tmp-" in k for k in keys), keys
    # the restart: each rank fetched its own working copy of the run's newest marked step,
    # every shard of it (rank 1's copy keeps it: that rank writes nothing else there)
    copies = sorted((tmp_path / "staging" / "runs").glob("fsdp.*/fsdp"))
    assert len(copies) == 3, copies  # the first attempt's, then one per restarted rank
    (rank1,) = [c for c in copies if not (c / "cache").is_symlink()]  # rank 0 links the cache
    (fetched,) = (rank1 / "checkpoints").iterdir()
    assert {p.name for p in (fetched / "sharded").iterdir()} == {".metadata", "__0_0.distcp",
                                                                 "__1_0.distcp"}
    assert (fetched / "state.json").exists() and fetched.name < steps[0]
    written = b"".join(s3.get(k) for k in keys)
    assert SECRET_KEY.encode() not in written
    assert not local_runs.exists()  # runs_dir is the bucket: nothing went to a local runs/ folder
