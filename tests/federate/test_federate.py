"""``privet federate`` end to end: three client processes with non-IID label skew.

One uninterrupted federation (a module fixture) is checked for its files, its FedAvg
arithmetic, its accuracy against centralised training on the union, and its export;
a second one is SIGKILLed mid-round and resumed, and must reach the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from privet.crypto import Cipher, decode_key
from privet.storage import Storage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federate_support import SIZES, make_federation, pipeline  # noqa: E402

pytestmark = pytest.mark.slow
SEAM = Path(__file__).resolve().parent / "seam"
ROUNDS = 4


def launcher() -> list[str]:
    script = Path(sys.executable).with_name("privet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "privet"]


def env(tmp: Path) -> dict[str, str]:
    """No installed plugin (the tiny test plugin comes from plugins.paths), one thread."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    base.pop("PYTHONPATH", None)
    return {**base, "PRIVET_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1",
            "XDG_CACHE_HOME": str(tmp / "xdg")}


def privet(tmp: Path, *args: str, timeout: float = 300,
           extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*launcher(), *args], cwd=tmp, env={**env(tmp), **(extra_env or {})},
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    """One uninterrupted federation, its coordinator and clients watched by an audit hook
    (``seam/sitecustomize.py``) for run-folder I/O that bypasses the storage module."""
    root = tmp_path_factory.mktemp("federation")
    file = make_federation(root, rounds=ROUNDS)
    watch = {"PYTHONPATH": os.pathsep.join([str(SEAM), os.environ.get("PYTHONPATH", "")]),
             "PRIVET_SEAM_RUNS": str(root / "runs"), "PRIVET_SEAM_OUT": str(root / "seam.txt")}
    privet(root, "federate", str(file), extra_env=watch)
    return root / "runs" / "fed"


def test_no_core_module_touches_the_federation_without_the_storage_module(federation):
    found = federation.parents[1] / "seam.txt"
    assert not found.exists(), found.read_text()
    watched = (federation.parents[1] / "seam.txt.watched").read_text().splitlines()
    # the coordinator and its three clients (python -m privet.federate.client RUN NAME)
    assert len(watched) == 4 and sum(w.split()[-1] in SIZES for w in watched) == 3, watched


def test_three_clients_train_and_the_global_model_is_their_weighted_average(federation):
    report = json.loads((federation / "report.json").read_text())
    assert report["status"] == "completed" and report["rounds_done"] == ROUNDS
    train_counts = {n: int(s * 0.75) for n, s in SIZES.items()}  # 25% of each client is val
    assert report["clients"] == train_counts
    assert [h["round"] for h in report["history"]] == list(range(1, ROUNDS + 1))
    rnd = federation / "round-002"
    assert sorted(p.name for p in rnd.iterdir()) == ["committed.json", "global.safetensors",
                                                      "report.json", "updates"]
    infos = {n: json.loads((rnd / "updates" / f"{n}.json").read_text()) for n in SIZES}
    assert {n: i["examples"] for n, i in infos.items()} == train_counts
    ups = {n: load_file(str(rnd / "updates" / f"{n}.safetensors")) for n in SIZES}
    total = sum(train_counts.values())
    glob = load_file(str(rnd / "global.safetensors"))
    for key, value in glob.items():
        expected = sum(ups[n][key].double() * train_counts[n] / total for n in SIZES)
        assert torch.allclose(value.double(), expected, atol=1e-6), key
    assert not torch.equal(glob["0.weight"], ups["a"]["0.weight"])
    # each client's own run folder per round: report, TensorBoard, checkpoints
    client_round = federation / "clients" / "b" / "round-002"
    assert json.loads((client_round / "report.json").read_text())["status"] == "completed"
    assert any((client_round / "tensorboard").iterdir())
    assert any((federation / "tensorboard").iterdir())
    rr = json.loads((rnd / "report.json").read_text())
    val = {n: rr["clients"][n]["val_examples"] for n in SIZES}
    acc = sum(rr["clients"][n]["val"]["val/accuracy"] * val[n] for n in SIZES) / sum(val.values())
    assert rr["global"]["val/accuracy"] == pytest.approx(acc)


def test_federated_accuracy_is_within_3_points_of_centralised_training(federation):
    root = federation.parents[1]
    central = pipeline(["a/data", "b/data", "c/data"], epochs=ROUNDS)
    central["name"] = "central"
    (root / "central.yaml").write_text(yaml.safe_dump(central))
    privet(root, "run", "central.yaml")
    central_best = json.loads((root / "runs" / "central" / "report.json").read_text())["best"]
    fed = json.loads((federation / "report.json").read_text())["best"]
    # the union of the clients' val records is exactly the centralised val split
    assert fed["val/accuracy"] >= central_best["val/accuracy"] - 0.03, (fed, central_best)
    assert fed["val/accuracy"] > 0.6  # far above the 1/3 of chance: it learnt


def test_the_final_folder_exports_the_global_model_with_the_clients_cleaners(federation):
    final = federation / "clients" / "a" / "final"
    best = json.loads((federation / "report.json").read_text())["best_round"]
    assert (final / "best" / "model.safetensors").read_bytes() == \
        (federation / f"round-{best:03d}" / "global.safetensors").read_bytes()
    privet(federation.parents[1], "export", str(final), "--format", "torchscript")
    bundle = json.loads((final / "export" / "bundle.json").read_text())
    assert bundle["cleaners"][0]["name"] == "tiny.scale"


def test_an_encrypted_coordinator_killed_mid_round_resumes_to_the_same_weights(federation, tmp_path):
    """Three rounds instead of four (rounds 1-3 compute exactly what the fixture's did),
    sealed with a key: the federation's files and every client's run folder."""
    from privet.crypto import MAGIC, new_key_text

    security = {"security": {"encryption": {"key": "env:FED_KEY"}}}
    file = make_federation(tmp_path, rounds=3, extra=security, pipeline_extra=security)
    run = tmp_path / "runs" / "fed"
    key = {"FED_KEY": new_key_text()}
    proc = subprocess.Popen([*launcher(), "federate", str(file)], cwd=tmp_path,
                            env={**env(tmp_path), **key}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "round-002" / "updates").exists():  # round 2 has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "round-002" / "committed.json").exists()
    assert (run / "round-001" / "committed.json").exists()
    privet(tmp_path, "federate", "--resume", str(run), extra_env=key)
    storage = Storage(run, cipher=Cipher(decode_key(key["FED_KEY"], "test")))
    for r in (1, 2, 3):
        name = f"round-{r:03d}/global.safetensors"
        assert (run / name).read_bytes()[:len(MAGIC)] == MAGIC  # sealed at rest
        assert storage.read_bytes(name) == (federation / name).read_bytes(), name
    for sealed in ("round-003/updates/a.safetensors", "clients/a/round-003/best/model.safetensors",
                   "clients/a/final/best/model.safetensors"):
        assert (run / sealed).read_bytes()[:len(MAGIC)] == MAGIC, sealed
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "completed" and report["rounds_done"] == 3
    wrong = subprocess.run([*launcher(), "federate", "--resume", str(run)], cwd=tmp_path,
                           env={**env(tmp_path), "FED_KEY": new_key_text()},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "authentication failed" in wrong.stderr, wrong.stderr
    assert json.loads((run / "report.json").read_text()) == report  # left as it was
    assert wrong.stderr.strip().count("\n") == 0


def test_a_tampered_global_is_refused_on_resume(federation, tmp_path):
    copy = tmp_path / "fed"
    shutil.copytree(federation, copy, symlinks=True)
    weights = load_file(str(copy / "round-001" / "global.safetensors"))
    weights["0.weight"][0, 0] += 1.0
    from safetensors.torch import save_file

    save_file(weights, str(copy / "round-001" / "global.safetensors"))
    proc = subprocess.run([*launcher(), "federate", "--resume", str(copy)], cwd=tmp_path,
                          env=env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "does not match its round's commit marker" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
