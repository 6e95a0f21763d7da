"""Whole pipelines against a real S3 API on loopback: data, run folder, export and
predict all on ``s3://``; a SIGKILL mid-upload resumed from the bucket; encryption; no
credential in anything written."""

from __future__ import annotations

import base64
import json
import signal

import pytest

from remote_support import (ACCESS_KEY, MARKER, SECRET_KEY, TESTS, corpus, every_file,
                            pipeline)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(module_s3):
    """One uninterrupted run, data and run folder on the bucket."""
    s3 = module_s3
    s3.put("data/part-0.jsonl", corpus(240))
    s3.put("inputs/new.jsonl", corpus(9, seed=8))
    folder = s3.folder / "reference"
    folder.mkdir()
    r = s3.cli("run", str(pipeline(folder, data=s3.url("data"), runs=s3.url("runs"), name="reference")))
    assert r.returncode == 0, r.stderr
    return r


def _steps(s3, run: str) -> list[str]:
    """Complete checkpoints of a run on the bucket (those whose marker exists)."""
    return sorted(k.split("/")[3] for k in s3.keys(f"runs/{run}/checkpoints/")
                  if k.endswith("/state.json"))


def _weights(s3, key: str, cipher=None) -> dict:
    from safetensors.torch import load

    data = s3.get(key)
    return load(cipher.decrypt(data, name=key) if cipher is not None else data)


def test_a_pipeline_reads_trains_exports_and_predicts_on_s3(module_s3, reference):
    s3 = module_s3
    run_url = s3.url("runs/reference")
    assert f"run completed: {run_url} " in reference.stdout, reference.stdout
    keys = s3.keys("runs/reference/")
    for key in ("config.yaml", "manifest.json", "report.json", "state/components.json",
                "best/model.safetensors"):
        assert f"runs/reference/{key}" in keys, keys
    steps = sorted({k.split("/")[3] for k in keys if "/checkpoints/step-" in k})
    assert steps == _steps(s3, "reference") and len(steps) == 2, steps  # pruned on the store too
    for step in steps:
        for name in ("model.safetensors", "state.pt", "state.json"):
            assert f"runs/reference/checkpoints/{step}/{name}" in keys
    assert any(k.startswith("runs/reference/tensorboard/") for k in keys)
    assert not any("/.tmp-" in k or k.endswith(".lock") for k in keys), keys
    (data_file,) = json.loads(s3.get("runs/reference/manifest.json"))["data_files"]
    assert data_file["path"] == s3.url("data/part-0.jsonl") and data_file["etag"]
    assert json.loads(s3.get("runs/reference/report.json"))["status"] == "completed"

    r = s3.cli("export", run_url, "--format", "torchscript", "--out", s3.url("bundles/reference"))
    assert r.returncode == 0, r.stderr
    assert "bundles/reference/bundle.json" in s3.keys("bundles/")
    assert "runs/reference/export/bundle.json" in s3.keys("runs/reference/export/")

    r = s3.cli("--plugin-dir", str(TESTS), "predict", "--trust-code", s3.url("bundles/reference"),
               s3.url("inputs/new.jsonl"), "--out", s3.url("predictions/new.jsonl"))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in s3.get("predictions/new.jsonl").decode().splitlines()]
    assert len(lines) == 9 and all("error" not in x for x in lines), lines
    r = s3.cli("--plugin-dir", str(TESTS), "predict", "--trust-code", run_url,  # a run: its bundle
               s3.url("inputs/new.jsonl"))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 9

    # no credential anywhere: objects, local working copies, caches, output
    written = [s3.get(k) for k in s3.keys()] + [p.read_bytes() for p in every_file(s3.folder)]
    for secret in (ACCESS_KEY.encode(), SECRET_KEY.encode()):
        assert not any(secret in blob for blob in written)
        assert secret.decode() not in reference.stdout + reference.stderr + r.stdout + r.stderr
    # the records themselves never went to the bucket (only the prepared cache, kept local)
    assert not any(MARKER.encode() in s3.get(k) for k in s3.keys("runs/"))


def test_sigkill_mid_upload_then_resume_from_the_bucket_reaches_the_same_weights_sealed(
        module_s3, reference):
    from privet.crypto import MAGIC, Cipher, new_key_text

    s3 = module_s3
    key = new_key_text()
    folder = s3.folder / "killed"
    folder.mkdir()
    path = pipeline(folder, data=s3.url("data"), runs=s3.url("runs"), name="killed",
                    security={"encryption": {"key": "env:PRIVET_KEY"}})
    r = s3.cli("run", str(path), env={"PRIVET_KEY": key, "PRIVET_TEST_KILL_IN_UPLOAD": "3"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    killed_step = sorted({k.split("/")[3] for k in s3.keys("runs/killed/checkpoints/")})[-1]
    assert f"runs/killed/checkpoints/{killed_step}/model.safetensors" in s3.keys("runs/killed/")
    assert killed_step not in _steps(s3, "killed"), "a step without its marker is not complete"

    r = s3.cli("resume", s3.url("runs/killed"), env={"PRIVET_KEY": key})
    assert r.returncode == 0, r.stderr
    assert f"resuming from {_steps(s3, 'reference')[0][:5]}" in r.stderr

    from engine_support import assert_same_tensors

    cipher = Cipher(base64.b64decode(key))
    assert _steps(s3, "killed") == _steps(s3, "reference")
    last = _steps(s3, "killed")[-1]
    assert_same_tensors(_weights(s3, f"runs/killed/checkpoints/{last}/model.safetensors", cipher),
                        _weights(s3, f"runs/reference/checkpoints/{last}/model.safetensors"), last)
    assert_same_tensors(_weights(s3, "runs/killed/best/model.safetensors", cipher),
                        _weights(s3, "runs/reference/best/model.safetensors"), "best")

    # sealed before upload: every object but the plain config, manifest, reports and
    # TensorBoard scalars is ciphertext
    for name in s3.keys("runs/killed/"):
        data = s3.get(name)
        assert MARKER.encode() not in data, name
        if name.rsplit("/", 1)[-1] in ("config.yaml", "manifest.json", "report.json") or "/tensorboard/" in name:
            continue
        assert data.startswith(MAGIC), name
        assert not any(m in data for m in (b'"dtype"', b"__metadata__", b"PK\x03\x04")), name
