"""``privet generate`` and ``privet serve`` read run folders and bundles from ``s3://``:
a private local copy, the same text or predictions as the model read directly, and no
copy left behind once the command ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from privet.testing import wait_for_server

from remote_support import TESTS


def _left_in_staging(s3) -> list[Path]:
    """Files a command left in the staging folder (run working copies aside)."""
    root = Path(s3.env["PRIVET_STAGING_DIR"])
    return sorted(p for p in root.rglob("*") if p.is_file() and "runs" not in p.relative_to(root).parts)


def test_staging_copies_what_the_url_is_and_removes_it(s3, tmp_path):
    import contextlib

    from privet.errors import PrivetError
    from privet.staging import stage, staged_path

    for key in ("models/v3/bundle.json", "models/v3/onnx/model.onnx", "models/v3/merged/w.bin",
                "runs/r/config.yaml", "runs/r/state/components.json", "runs/r/best/model.safetensors",
                "runs/r/checkpoints/step-00000010/state.json", "runs/r/checkpoints/step-00000010/w",
                "runs/r/checkpoints/step-00000020/w",  # a killed upload: no marker
                "runs/r/tensorboard/events", "runs/r/export/bundle.json", "runs/r/export/m.onnx"):
        s3.put(key, key.encode())
    bundle = stage(s3.url("models/v3"), tmp_path / "a")
    assert (bundle.kind, bundle.path) == ("bundle", tmp_path / "a" / "models" / "v3")
    assert (bundle.path / "onnx" / "model.onnx").read_bytes() == b"models/v3/onnx/model.onnx"
    artifact = stage(s3.url("models/v3/merged"), tmp_path / "b")
    assert artifact.kind == "artifact" and (artifact.path.parent / "bundle.json").exists()
    run = stage(s3.url("runs/r"), tmp_path / "c")
    got = sorted(p.relative_to(run.path).as_posix() for p in run.path.rglob("*") if p.is_file())
    assert got == ["best/model.safetensors", "checkpoints/step-00000010/state.json",
                   "checkpoints/step-00000010/w", "config.yaml", "state/components.json"]
    export = stage(s3.url("runs/r"), tmp_path / "d", prefer_export=True)
    assert export.kind == "bundle" and export.path == tmp_path / "d" / "r" / "export"
    with pytest.raises(PrivetError, match="neither an export bundle"):
        stage(s3.url("runs"), tmp_path / "e")

    with contextlib.ExitStack() as stack:
        local = Path(staged_path(stack, s3.url("models/v3"), "predict"))
        holder = local.parents[1]
        assert (local / "bundle.json").exists() and holder.stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_mode & 0o077 == 0 for p in local.rglob("*"))
    assert not holder.exists()  # removed at exit
    assert staged_path(contextlib.ExitStack(), str(tmp_path), "predict") == str(tmp_path)

    from privet.commands.serve import _staged_specs

    with contextlib.ExitStack() as stack:  # privet serve's arguments: names as for local folders
        merged, named, local = _staged_specs(stack, (s3.url("models/v3/merged"),
                                                     f"bot={s3.url('runs/r/export')}", str(tmp_path)))
        name, _, path = merged.partition("=")
        assert name == "models" and Path(path).parts[-3:] == ("models", "v3", "merged")
        assert (Path(path).parent / "bundle.json").exists()
        name, _, path = named.partition("=")
        assert name == "bot" and (Path(path) / "m.onnx").exists() and local == str(tmp_path)
    assert not Path(path).exists()


@pytest.mark.slow
def test_generate_reads_an_s3_run_and_leaves_no_copy(s3):
    pytest.importorskip("privet_text")
    from privet.testing import make_test_host
    from privet.train.engine import run_from_config
    from privet.train.loading import load_trained

    host = make_test_host()
    host.load_installed("text")
    rows = [{"text": f"the cat sees the {w}. a dog likes the {w}."} for w in ("ball", "moon", "tree")] * 10
    s3.put("data/stories.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    _run_dir, report = run_from_config({
        "name": "stories", "seed": 2, "runs_dir": s3.url("runs"),
        "data": {"source": {"name": "text.jsonl", "options": {"paths": [s3.url("data/stories.jsonl")],
                                                              "label_field": None}}},
        "model": {"name": "text.gpt", "options": {"layers": 1, "hidden": 16, "heads": 2,
                                                  "context_length": 16, "dropout": 0.0,
                                                  "tokenizer": {"kind": "bpe", "vocab_size": 80}}},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": "none"},
    }, host=host, base_dir=s3.folder)
    assert report["status"] == "completed"
    url = s3.url("runs/stories")
    model, module = load_trained(url, host=host)
    expected = "".join(model.generate(module, "the cat", max_new_tokens=8, temperature=0.8,
                                      top_k=None, top_p=None, seed=4, raw=False))
    before = _left_in_staging(s3)

    r = s3.cli("generate", url, "--prompt", "the cat", "--max-new-tokens", "8", "--seed", "4",
               "--device", "cpu", env={"PRIVET_LOAD_PLUGINS": "text"})
    assert r.returncode == 0, r.stderr
    assert expected and r.stdout == (expected + "\n").replace("\r\n", "\n").replace("\r", "\n")
    assert _left_in_staging(s3) == before  # the private copy is gone

    r = s3.cli("generate", s3.url("runs/nothing-here"), "--prompt", "x",
               env={"PRIVET_LOAD_PLUGINS": "text"})
    assert r.returncode == 2 and "neither an export bundle" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr




@pytest.mark.slow
def test_serve_answers_predictions_from_an_s3_onnx_bundle(s3):
    pytest.importorskip("fastapi")
    pytest.importorskip("onnxruntime")
    import httpx

    from privet.export.predict import predict_path
    from privet.serve.server import free_port
    from privet.testing import make_test_host
    from privet.train.engine import run_from_config

    host = make_test_host()
    host.load_path(TESTS)
    run_from_config({"name": "tiny", "seed": 3, "runs_dir": s3.url("runs"),
                     "plugins": {"paths": [str(TESTS)]},
                     "data": {"source": {"name": "tiny.blobs", "options": {"n": 80, "features": 8}},
                              "cleaners": ["tiny.scale"]},
                     "model": {"name": "tiny.mlp"},
                     "train": {"epochs": 1, "batch_size": 32, "progress": "none", "device": "cpu"},
                     "export": {"formats": ["onnx"]}}, host=host, base_dir=s3.folder)
    records = [{"x": [0.1 * i] * 8} for i in range(3)]
    inputs = s3.folder / "records.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = _left_in_staging(s3)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVET_", "AWS_"))}
    env.update(s3.env, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "privet", "--plugin-dir", str(TESTS), "serve",
                             s3.url("runs/tiny/export"), "--port", str(port), "--insecure-no-auth",
                             "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, proc)
        assert [m["name"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["models"]] == ["tiny"]
        answer = httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records}, timeout=30)
        assert answer.status_code == 200, answer.text
        staged = _left_in_staging(s3)
        assert any(p.name == "bundle.json" for p in staged)  # served from a local copy ...
        assert all(p.stat().st_mode & 0o077 == 0 for p in staged)  # ... that only its owner reads
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert _left_in_staging(s3) == before  # ... removed when the server stopped

    import io

    from privet import objectstore

    local = s3.folder / "bundle"  # the same bundle read directly gives the same predictions
    objectstore.download_tree(s3.url("runs/tiny/export"), local)
    direct = io.StringIO()
    predict_path(local, inputs, direct, host=host)
    want = [json.loads(line) for line in direct.getvalue().splitlines()]
    got = answer.json()["predictions"]
    shared = sorted(set(got[0]) & set(want[0]) - {"index"})
    assert "label" in shared or "prediction" in shared, (got[0], want[0])
    assert [{k: g[k] for k in shared} for g in got] == [{k: w[k] for k in shared} for w in want]
