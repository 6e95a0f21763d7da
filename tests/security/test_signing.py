"""Encrypted and signed export bundles, predict with a key, and purging a run to its bundle.

Each test attacks: a bundle predicted without its key or with another, an export watched
for plaintext artifacts on disk (its temp folder, the system temp folder, Python-level
opens), a signed bundle with one changed byte in any file, an added file, an edited
manifest or another public key, and a purge that must leave the bundle untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine_support import KIT_DIR, TESTS

from privet.crypto import MAGIC, new_key_text

MARKER = "PRIVET-PLANTED-SECRET-7f3a"
#: Plaintext artifact magic: ONNX's producer field, torch's zip archives.
ARTIFACT_MAGIC = [b"pytorch", b"onnx", b"PK\x03\x04"]
_WATCH: dict[str, Any] = {"on": False, "opened": []}


def _audit(event: str, args: tuple) -> None:
    """Python-level opens for writing while an encrypted export runs (hooks stay for life)."""
    if _WATCH["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        if writing:
            _WATCH["opened"].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _pipeline(folder: Path) -> dict[str, Any]:
    with (folder / "data.jsonl").open("w") as fh:
        for i in range(120):
            label = i % 3
            fh.write(json.dumps({"x": [float(label * 2 + (i % 5) * 0.1)] * 6, "label": label,
                                 "note": f"{MARKER}-{i}"}) + "\n")
    return {"name": "enc", "seed": 3, "runs_dir": str(folder / "runs"),
            "data": {"source": {"name": "jsonl", "options": {"paths": ["data.jsonl"]}},
                     "cleaners": ["tiny.scale"]},
            "model": {"name": "tiny.mlp", "options": {"hidden": 8}},
            "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "progress": "log"},
            "export": {"formats": ["onnx"]},
            "security": {"encryption": {"key": "env:PRIVET_KEY"}}}


@pytest.fixture
def exported(run, tmp_path, monkeypatch) -> dict[str, Any]:
    """An encrypted run exported to ONNX, watched for plaintext artifacts on disk."""
    from privet.storage import Storage

    from engine_support import tinyplugin

    key = new_key_text()
    monkeypatch.setenv("PRIVET_KEY", key)
    # class names make the model write a preprocessing file of its own (labels.json)
    monkeypatch.setattr(tinyplugin.MLP, "class_names",
                        lambda self: [f"class-{i}" for i in range(self.classes)], raising=False)
    system_tmp = tmp_path / "systmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen: list[str] = []
    sealed_in_place: list[str] = []
    original = Storage.seal_tree

    def seal_tree(self: Storage, rel: str = "") -> list[str]:  # the moment before sealing
        for p in sorted(self.path(rel).rglob("*")):
            if p.is_file() and any(m in p.read_bytes() for m in ARTIFACT_MAGIC):
                seen.append(str(p))
        names = original(self, rel)
        sealed_in_place.extend(names)  # files that were plaintext in the bundle folder
        return names

    monkeypatch.setattr(Storage, "seal_tree", seal_tree)
    _WATCH.update(on=True, opened=[])
    try:
        outcome = run(_pipeline(tmp_path))
    finally:
        _WATCH["on"] = False
    outcome.assert_success()
    monkeypatch.setattr("privet.storage._PROTECTED", {})  # predict runs in another process
    return {"run_dir": outcome.run_dir, "key": key, "plain_before_seal": seen,
            "sealed_in_place": sealed_in_place,
            "opened": list(_WATCH["opened"]), "system_tmp": system_tmp}


def _inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"x": [0.5 * i] * 6, "id": i}) + "\n" for i in range(3)))
    return path


def _cli(args: list[str], monkeypatch: Any, capsys: Any) -> tuple[int, str, str]:
    from privet.cli import main

    monkeypatch.setenv("PRIVET_LOAD_PLUGINS", "")
    monkeypatch.setenv("PRIVET_PLUGIN_PATHS", "")
    with pytest.raises(SystemExit) as info:
        main(["--plugin-dir", str(TESTS), "--plugin-dir", str(KIT_DIR), *args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def _refused(result: tuple[int, str, str], *needles: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and err.startswith("privet: error: "), err
    for needle in needles:
        assert needle in err, err


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- no plaintext artifact on disk -------------------------------------------------------------


def test_an_encrypted_export_writes_no_plaintext_artifact_anywhere(exported):
    assert exported["plain_before_seal"] == [], "a plaintext artifact sat in the bundle's temp folder"
    # the model's own preprocessing files (labels.json) were written in a RAM-backed scratch
    # folder and sealed from there: nothing in the bundle folder needed sealing in place
    assert exported["sealed_in_place"] == []
    assert [p for p in exported["opened"] if p.endswith("labels.json")] and all(
        p.startswith("/dev/shm/privet-seal-") for p in exported["opened"] if p.endswith("labels.json"))
    artifacts = [p for p in exported["opened"] if p.endswith((".onnx", ".pt2", ".ts"))]
    assert artifacts == [], "an artifact was opened for writing in plaintext"
    for p in exported["system_tmp"].rglob("*"):
        if p.is_file():
            found = [m for m in ARTIFACT_MAGIC if m in p.read_bytes()]
            assert not found, f"{p} holds {found}"
    export = exported["run_dir"] / "export"
    onnx = export / "model.onnx"
    assert onnx.read_bytes().startswith(MAGIC)
    for p in export.rglob("*"):
        if p.is_file() and p.name != "report.json":
            assert not [m for m in [*ARTIFACT_MAGIC, MARKER.encode()] if m in p.read_bytes()], p


# -- predict with a key ------------------------------------------------------------------------


def test_predict_opens_a_sealed_bundle_with_its_key_and_seals_its_output(exported, tmp_path,
                                                                          monkeypatch, capsys):
    bundle, inputs, out = exported["run_dir"] / "export", _inputs(tmp_path), tmp_path / "pred.jsonl"
    monkeypatch.delenv("PRIVET_KEY")
    _refused(_cli(["predict", str(bundle), str(inputs)], monkeypatch, capsys), "key missing")

    key_file = tmp_path / "run.key"
    key_file.write_text(exported["key"])
    key_file.chmod(0o600)
    code, _, err = _cli(["predict", str(bundle), str(inputs), "--key", f"file:{key_file}",
                         "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    sealed = out.read_bytes()
    assert sealed.startswith(MAGIC) and b"location" not in sealed
    assert oct(out.stat().st_mode & 0o777) == "0o600"

    code, plain, err = _cli(["decrypt", str(out), "--key", f"file:{key_file}"], monkeypatch, capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in plain.splitlines()]
    assert [e["id"] for e in lines] == [0, 1, 2] and all("error" not in e for e in lines)

    monkeypatch.setenv("PRIVET_KEY", exported["key"])  # the bundle's own reference
    code, stdout, err = _cli(["predict", str(bundle), str(inputs)], monkeypatch, capsys)
    assert code == 0 and [json.loads(x)["id"] for x in stdout.splitlines()] == [0, 1, 2], err

    monkeypatch.setenv("OTHER_KEY", new_key_text())
    before = out.read_bytes()
    _refused(_cli(["predict", str(bundle), str(inputs), "--key", "env:OTHER_KEY", "--out", str(out)],
                  monkeypatch, capsys), "authentication failed", str(bundle / "bundle.json"))
    assert out.read_bytes() == before, "a refused predict leaves the earlier output"
    _refused(_cli(["decrypt", str(out), "--key", "env:OTHER_KEY"], monkeypatch, capsys),
             "authentication failed", str(out))


def test_a_bundle_never_runs_the_command_its_report_names(exported, tmp_path, monkeypatch, capsys):
    bundle = exported["run_dir"] / "export"
    marker = tmp_path / "ran"
    report = json.loads((bundle / "report.json").read_text())
    report["encryption"]["key"] = f"command:touch {marker}"
    (bundle / "report.json").write_text(json.dumps(report))
    _refused(_cli(["predict", str(bundle), str(_inputs(tmp_path))], monkeypatch, capsys),
             "key missing", "--key")
    assert not marker.exists()


def test_the_predictor_api_takes_a_key_reference(exported, host, tmp_path, monkeypatch):
    from privet.export.predict import Predictor

    monkeypatch.setenv("SOME_KEY", exported["key"])
    monkeypatch.delenv("PRIVET_KEY")
    predictor = Predictor.open(exported["run_dir"], host, key="env:SOME_KEY")
    entries = list(predictor.predict(iter([("r1", {"x": [1.0] * 6})])))
    assert predictor.artifact == "onnx" and "error" not in entries[0]


# -- signed bundles ----------------------------------------------------------------------------


def test_signed_bundles_round_trip_and_any_changed_byte_is_refused(exported, tmp_path, monkeypatch,
                                                                   capsys):
    run_dir = exported["run_dir"]
    keyfile = tmp_path / "keys" / "sign.pem"
    assert _cli(["keys", "new-signing", str(keyfile)], monkeypatch, capsys)[0] == 0
    pub = Path(f"{keyfile}.pub")
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    code, _, err = _cli(["export", str(run_dir), "--sign", str(keyfile)], monkeypatch, capsys)
    assert code == 0, err
    bundle, inputs = run_dir / "export", _inputs(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in bundle.iterdir() if p.name != "manifest.json"}

    code, out, err = _cli(["predict", str(bundle), str(inputs), "--verify-key", str(pub)],
                          monkeypatch, capsys)
    assert code == 0 and len(out.splitlines()) == 3, err

    for name in sorted(manifest["files"]) + ["manifest.json"]:  # one flipped byte, any file
        copy = tmp_path / f"tampered-{name}"
        shutil.copytree(bundle, copy)
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        needle = str(copy / name)
        _refused(_cli(["predict", str(copy), str(inputs), "--verify-key", str(pub)],
                      monkeypatch, capsys), needle)

    added = tmp_path / "added"
    shutil.copytree(bundle, added)
    (added / "extra.onnx").write_bytes(b"x")
    _refused(_cli(["predict", str(added), str(inputs), "--verify-key", str(pub)], monkeypatch, capsys),
             str(added / "extra.onnx"), "not in the signed manifest")

    other = tmp_path / "other.pem"
    assert _cli(["keys", "new-signing", str(other)], monkeypatch, capsys)[0] == 0
    _refused(_cli(["predict", str(bundle), str(inputs), "--verify-key", f"{other}.pub"],
                  monkeypatch, capsys), "signature verification failed", str(bundle / "manifest.json"))
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    (unsigned / "manifest.json").unlink()
    _refused(_cli(["predict", str(unsigned), str(inputs), "--verify-key", str(pub)],
                  monkeypatch, capsys), "not signed")


def test_a_signing_key_others_can_read_is_refused(tmp_path, monkeypatch, capsys):
    from privet.signing import SignatureError, new_signing_key, sign_bundle

    private, _ = new_signing_key(tmp_path / "k.pem")
    private.chmod(0o644)
    (tmp_path / "b").mkdir()
    with pytest.raises(SignatureError, match="read by others"):
        sign_bundle(tmp_path / "b", private)
    assert not (tmp_path / "b" / "manifest.json").exists()
    with pytest.raises(SignatureError, match="already exists"):
        new_signing_key(private)


# -- retention: purge a run down to its bundle -------------------------------------------------


def test_runs_purge_keeps_only_the_bundle(exported, tmp_path, monkeypatch, capsys):
    run_dir = exported["run_dir"]
    cache_target = os.path.realpath(run_dir / "cache")
    bundle_before = _snapshot(run_dir / "export")
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "best").is_dir()

    code, out, err = _cli(["runs", "purge", str(run_dir), "--keep", "export"], monkeypatch, capsys)
    assert code == 0, err
    assert "checkpoints" in out and "best" in out
    names = set(os.listdir(run_dir))
    assert not names & {"checkpoints", "best", "cache", "state"}, names
    assert {"export", "config.yaml", "manifest.json", "report.json"} <= names
    assert _snapshot(run_dir / "export") == bundle_before
    assert os.path.isdir(cache_target), "the shared cache itself is left to 'privet cache clear'"
    code, stdout, err = _cli(["predict", str(run_dir), str(_inputs(tmp_path))], monkeypatch, capsys)
    assert code == 0 and len(stdout.splitlines()) == 3, err

    shutil.rmtree(run_dir / "export")
    config = run_dir / "config.yaml"
    assert yaml.safe_load(config.read_text())
    _refused(_cli(["runs", "purge", str(run_dir), "--keep", "export"], monkeypatch, capsys),
             "no export bundle")
