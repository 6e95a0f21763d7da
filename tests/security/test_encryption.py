"""Encryption at rest: the sealed file format, key providers, and encrypted runs.

Each test attacks the defence: bytes flipped, files truncated, chunks reordered within a
file or moved between files, a wrong or missing key, a key file others can read, a run
folder grepped for the secrets of its data, a run killed mid-way and resumed, a umask of
000. Every refusal is one line naming the file, with "authentication failed" or "key
missing", and leaves what was written before unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import stat
import sys
from pathlib import Path

import pytest
import yaml

from engine_support import KIT_DIR, TESTS, assert_same_tensors

from privet.crypto import (HEADER, TAG, AuthenticationError, Cipher, KeyMissingError, decode_key,
                           new_key_text)
from privet.storage import Storage

CHUNK = 1024  # the smallest chunk size: several chunks from a few KiB of data
MARKER = "PRIVET-PLANTED-SECRET-7f3a"


def _cipher(key: bytes | None = None) -> Cipher:
    return Cipher(key or os.urandom(32), chunk_size=CHUNK)


def _sealed(tmp_path: Path, cipher: Cipher, name: str = "data.bin", size: int = 3 * CHUNK + 100
            ) -> tuple[Storage, bytes]:
    plain = random.Random(size).randbytes(size)
    storage = Storage(tmp_path / "sealed", cipher=cipher)
    storage.write_bytes(name, plain)
    return storage, plain


def _chunk(data: bytes, i: int) -> slice:
    sealed = CHUNK + TAG
    return slice(HEADER + i * sealed, HEADER + (i + 1) * sealed)


def _refused(storage: Storage, name: str) -> str:
    with pytest.raises(AuthenticationError) as info:
        storage.read_bytes(name)
    message = str(info.value)
    assert str(storage.path(name)) in message and "authentication failed" in message
    assert "\n" not in message
    return message


# -- the format ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK, 3 * CHUNK + 100])
def test_sealed_files_round_trip_and_hide_their_content(tmp_path, size):
    cipher = _cipher()
    storage, plain = _sealed(tmp_path, cipher, size=size)
    on_disk = storage.path("data.bin").read_bytes()

    assert storage.read_bytes("data.bin") == plain
    assert len(on_disk) == HEADER + max(1, -(-size // CHUNK)) * TAG + size
    if size >= 16:
        assert plain[:16] not in on_disk


def test_two_writes_of_the_same_data_differ_on_disk(tmp_path):
    cipher = _cipher()
    storage = Storage(tmp_path, cipher=cipher)
    storage.write_bytes("a", b"same bytes" * 100)
    storage.write_bytes("b", b"same bytes" * 100)

    assert storage.path("a").read_bytes() != storage.path("b").read_bytes()


@pytest.mark.parametrize("where", ["header", "first chunk", "last tag"])
def test_a_flipped_byte_is_detected_naming_the_file(tmp_path, where):
    storage, _ = _sealed(tmp_path, _cipher())
    path = storage.path("data.bin")
    data = bytearray(path.read_bytes())
    at = {"header": 12, "first chunk": HEADER + 5, "last tag": len(data) - 1}[where]
    data[at] ^= 0x01
    path.write_bytes(bytes(data))

    _refused(storage, "data.bin")


@pytest.mark.parametrize("cut", ["at a chunk boundary", "inside a chunk", "to the header"])
def test_a_truncated_file_is_detected(tmp_path, cut):
    storage, _ = _sealed(tmp_path, _cipher())
    path = storage.path("data.bin")
    data = path.read_bytes()
    keep = {"at a chunk boundary": _chunk(data, 2).start, "inside a chunk": len(data) - 40,
            "to the header": HEADER}[cut]
    path.write_bytes(data[:keep])

    _refused(storage, "data.bin")


def test_two_chunks_swapped_within_a_file_are_detected(tmp_path):
    storage, _ = _sealed(tmp_path, _cipher())
    path = storage.path("data.bin")
    data = bytearray(path.read_bytes())
    first, second = data[_chunk(data, 0)], data[_chunk(data, 1)]
    data[_chunk(data, 0)], data[_chunk(data, 1)] = second, first
    path.write_bytes(bytes(data))

    _refused(storage, "data.bin")


def test_a_chunk_moved_from_another_file_with_the_same_key_is_detected(tmp_path):
    cipher = _cipher()
    storage, _ = _sealed(tmp_path, cipher, "a.bin")
    storage.write_bytes("b.bin", os.urandom(3 * CHUNK + 100))
    a, b = bytearray(storage.path("a.bin").read_bytes()), storage.path("b.bin").read_bytes()
    a[_chunk(a, 1)] = b[_chunk(b, 1)]  # same position, same key, another file
    storage.path("a.bin").write_bytes(bytes(a))

    _refused(storage, "a.bin")
    assert len(storage.read_bytes("b.bin")) == 3 * CHUNK + 100


def test_a_wrong_key_is_refused_and_the_file_is_left_as_it_was(tmp_path):
    storage, _ = _sealed(tmp_path, _cipher())
    before = storage.path("data.bin").read_bytes()

    _refused(Storage(storage.root, cipher=_cipher()), "data.bin")
    assert storage.path("data.bin").read_bytes() == before


def test_plaintext_put_where_a_sealed_file_belongs_is_refused(tmp_path):
    storage, _ = _sealed(tmp_path, _cipher())
    storage.path("data.bin").write_bytes(b'{"a forged": "plaintext state"}')

    _refused(storage, "data.bin")


def test_a_sealed_file_read_without_a_key_says_key_missing(tmp_path):
    storage, _ = _sealed(tmp_path, _cipher())

    with pytest.raises(KeyMissingError, match="key missing") as info:
        Storage(storage.root, cipher=None).read_bytes("data.bin")
    assert str(storage.path("data.bin")) in str(info.value)


def test_config_manifest_and_reports_stay_plain_everything_else_is_sealed(tmp_path):
    storage = Storage(tmp_path, cipher=_cipher())
    for name in ("config.yaml", "manifest.json", "report.json", "state/components.json"):
        storage.write_text(name, f"{MARKER} in {name}")

    assert MARKER in (tmp_path / "config.yaml").read_text()
    assert MARKER in (tmp_path / "report.json").read_text()
    assert MARKER.encode() not in (tmp_path / "state" / "components.json").read_bytes()
    assert storage.read_text("state/components.json") == f"{MARKER} in state/components.json"


# -- keys ------------------------------------------------------------------------------------


def test_keys_are_32_bytes_of_base64():
    text = new_key_text()

    assert len(decode_key(text, "here")) == 32
    with pytest.raises(KeyMissingError, match="here: key missing"):
        decode_key(base64.b64encode(os.urandom(16)).decode(), "here")
    with pytest.raises(KeyMissingError):
        decode_key("not base64 at all!" * 3, "here")


def _provider(host, name):
    return host.catalog.get("key_provider", name).cls()


def test_a_key_file_others_can_read_is_refused_with_the_reason(host, tmp_path):
    key_file = tmp_path / "run.key"
    key_file.write_text(new_key_text())
    key_file.chmod(0o644)

    with pytest.raises(KeyMissingError) as info:
        _provider(host, "file").load("run.key", tmp_path)
    message = str(info.value)
    assert str(key_file) in message and "0644" in message and "0600" in message

    key_file.chmod(0o600)
    assert len(_provider(host, "file").load("run.key", tmp_path)) == 32


def test_env_and_command_providers(host, tmp_path, monkeypatch):
    text = new_key_text()
    monkeypatch.setenv("PRIVET_TEST_KEY", text)
    assert _provider(host, "env").load("PRIVET_TEST_KEY", tmp_path) == base64.b64decode(text)
    monkeypatch.delenv("PRIVET_TEST_KEY")
    with pytest.raises(KeyMissingError, match="PRIVET_TEST_KEY is not set"):
        _provider(host, "env").load("PRIVET_TEST_KEY", tmp_path)

    command = f"{sys.executable} -c \"print('{text}')\""
    assert _provider(host, "command").load(command, tmp_path) == base64.b64decode(text)
    with pytest.raises(KeyMissingError, match="exited with 3"):
        _provider(host, "command").load(f"{sys.executable} -c \"raise SystemExit(3)\"", tmp_path)


def test_a_key_pasted_into_the_pipeline_file_is_refused_without_echoing_it():
    from privet.config import load_config
    from privet.errors import ConfigError

    key = new_key_text()
    with pytest.raises(ConfigError) as info:
        load_config(data={"data": {"source": "x"}, "model": "m",
                          "security": {"encryption": {"key": key}}})
    assert "security.encryption.key" in str(info.value) and key not in str(info.value)


# -- runs --------------------------------------------------------------------------------------


def _corpus(folder: Path, n: int = 300) -> Path:
    """Records with planted secrets in every one: a marker and an e-mail address."""
    rng = random.Random(5)
    path = folder / "data.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            label = i % 3
            fh.write(json.dumps({"x": [rng.gauss(2 * label, 1) for _ in range(6)], "label": label,
                                 "note": f"{MARKER}-{i} alice.{i}@example.com"}) + "\n")
    return path


def _pipeline(folder: Path, **train) -> Path:
    _corpus(folder)
    config = {
        "name": "enc", "seed": 11, "runs_dir": "runs",
        "plugins": {"paths": [str(TESTS), str(KIT_DIR)]},
        "data": {"source": {"name": "jsonl", "options": {"paths": ["data.jsonl"]}},
                 "cleaners": ["tiny.scale"]},
        "model": {"name": "tiny.mlp", "options": {"hidden": 16, "dropout": 0.3}},
        "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "deterministic": True,
                  "progress": "log", "checkpoint": {"every_n_steps": 5, "keep_last": 2}, **train},
        "export": {"formats": []},
        "security": {"encryption": {"key": "env:PRIVET_KEY"}},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


#: What no file of an encrypted run may contain: the data's secrets and the magic bytes
#: of the formats that would be there in plaintext (Arrow, safetensors' JSON header,
#: torch's zip, ONNX's protobuf producer field).
FORBIDDEN = [MARKER.encode(), b"@example.com", b"ARROW1", b'"dtype"', b"__metadata__",
             b"PK\x03\x04", b"pytorch", b"onnx"]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file (but ``.lock``, which holds the pid of the last process)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in _files(root) if p.name != ".lock"}


def _sealed_weights(ckpt: Path, key: str) -> dict:
    from safetensors.torch import load

    return load(Storage(ckpt, cipher=Cipher(base64.b64decode(key))).read_bytes("model.safetensors"))


@pytest.mark.slow
def test_an_encrypted_run_leaks_no_secret_and_resumes_after_sigkill_bit_identical(privet_cli, tmp_path):
    pipeline = _pipeline(tmp_path)
    key = new_key_text()
    env = {"PRIVET_KEY": key}
    runs = tmp_path / "runs"

    reference = privet_cli("run", str(pipeline), "--name", "reference", env=env)
    assert reference.returncode == 0, reference.stderr
    killed = privet_cli("run", str(pipeline), "--name", "killed",
                        env={**env, "PRIVET_TEST_KILL_AFTER_STEPS": str(random.randint(7, 14))})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = privet_cli("resume", str(runs / "killed"), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-" in resumed.stderr

    # bit-identical to the uninterrupted run, read back with the key
    for sub in ("best",):
        assert_same_tensors(_sealed_weights(runs / "killed" / sub, key),
                            _sealed_weights(runs / "reference" / sub, key), sub)
    last = sorted((runs / "killed" / "checkpoints").glob("step-*"))[-1]
    ref_last = sorted((runs / "reference" / "checkpoints").glob("step-*"))[-1]
    assert last.name == ref_last.name
    assert_same_tensors(_sealed_weights(last, key), _sealed_weights(ref_last, key), "last checkpoint")

    # no planted secret and no plaintext format anywhere under the runs folder and the cache
    files = _files(runs)
    assert any(".cache" in p.parts for p in files) and any(p.suffix == ".arrow" for p in files)
    for path in files:
        if path.name in ("config.yaml", "manifest.json", "report.json") or "tensorboard" in path.parts:
            assert MARKER.encode() not in path.read_bytes(), path
            continue
        data = path.read_bytes()
        found = [m for m in FORBIDDEN if m in data]
        assert not found, f"{path} holds {found}"


@pytest.mark.slow
def test_resume_without_the_key_or_with_another_fails_cleanly_and_changes_nothing(privet_cli, tmp_path):
    pipeline = _pipeline(tmp_path, epochs=1)
    key = new_key_text()
    first = privet_cli("run", str(pipeline), env={"PRIVET_KEY": key})
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "enc"
    before = _snapshot(tmp_path / "runs")

    missing = privet_cli("resume", str(run_dir))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "key missing" in missing.stderr and str(run_dir / "config.yaml") in missing.stderr

    wrong = privet_cli("resume", str(run_dir), env={"PRIVET_KEY": new_key_text()})
    assert wrong.returncode == 2, wrong.stderr
    assert wrong.stderr.strip().count("\n") == 0
    assert "authentication failed" in wrong.stderr and str(run_dir) in wrong.stderr
    assert _snapshot(tmp_path / "runs") == before, "a refused resume wrote nothing"

    # a flipped byte in the last checkpoint: refused naming it; the checkpoints stay as they were
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    state = last / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x40
    state.write_bytes(bytes(data))
    checkpoints_before = _snapshot(run_dir / "checkpoints")
    tampered = privet_cli("resume", str(run_dir), env={"PRIVET_KEY": key})
    assert tampered.returncode == 2
    assert "authentication failed" in tampered.stderr and str(state) in tampered.stderr
    assert _snapshot(run_dir / "checkpoints") == checkpoints_before


def _in_process(pipeline: Path, tmp_path: Path) -> dict:
    """The pipeline as a dict for ``run_pipeline``, whose host has the test plugins already."""
    config = yaml.safe_load(pipeline.read_text())
    config["runs_dir"] = str(tmp_path / "runs")
    config.pop("plugins")
    return config


def test_load_trained_reads_an_encrypted_run_with_its_key(run, host, tmp_path, monkeypatch):
    import privet

    key = new_key_text()
    monkeypatch.setenv("PRIVET_KEY", key)
    config = _in_process(_pipeline(tmp_path, epochs=1), tmp_path)
    outcome = run(config)
    outcome.assert_success()

    model, module = privet.load_trained(outcome.run_dir, host=host)
    assert_same_tensors(dict(module.state_dict()), _sealed_weights(outcome.run_dir / "best", key), "best")
    monkeypatch.setenv("PRIVET_KEY", new_key_text())
    with pytest.raises(AuthenticationError, match="authentication failed"):
        privet.load_trained(outcome.run_dir, host=host)


def test_umask_000_still_gives_owner_only_folders_and_files(run, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVET_KEY", new_key_text())
    config = _in_process(_pipeline(tmp_path, epochs=1), tmp_path)
    old = os.umask(0)
    try:
        outcome = run(config)
        plain_config = dict(config, name="plain", security={})
        plain = run(plain_config)
    finally:
        os.umask(old)
    outcome.assert_success()
    plain.assert_success()

    for path in (tmp_path / "runs").rglob("*"):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {mode:04o}"


def test_an_encrypted_runs_export_bundle_is_sealed_and_refused_without_the_key(run, tmp_path,
                                                                               monkeypatch):
    from privet.export.bundle import Bundle

    monkeypatch.setenv("PRIVET_KEY", new_key_text())
    config = _in_process(_pipeline(tmp_path, epochs=1), tmp_path)
    config["export"] = {"formats": ["onnx"]}
    outcome = run(config)
    outcome.assert_success()

    export = outcome.run_dir / "export"
    assert (export / "bundle.json").exists()
    for path in _files(export):
        if path.name != "report.json":
            found = [m for m in FORBIDDEN if m in path.read_bytes()]
            assert not found, f"{path} holds {found}"
    assert Bundle.open(export).artifact_names() == ["onnx"]  # this process holds the key

    monkeypatch.setattr("privet.storage._PROTECTED", {})  # another process, without it
    with pytest.raises(KeyMissingError, match="key missing") as info:
        Bundle.open(export)
    assert str(export / "bundle.json") in str(info.value)


def test_cache_keep_false_removes_the_cache_on_success_and_on_failure(run, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVET_KEY", new_key_text())
    config = _in_process(_pipeline(tmp_path, epochs=1), tmp_path)
    config["data"]["cache"] = {"keep": False}
    cache_root = tmp_path / "runs" / ".cache"

    done = run(config)
    done.assert_success()
    assert [p for p in cache_root.iterdir()] == [], "the prepared cache is gone"
    assert not os.path.lexists(done.run_dir / "cache")

    failing = json.loads(json.dumps(config))
    failing["name"] = "failing"
    failing["train"]["max_steps"] = 3
    failing["model"]["options"]["hidden"] = -1  # fails when the module is built, after preparation
    failed = run(failing)
    assert failed.error is not None
    report = json.loads((tmp_path / "runs" / "failing" / "report.json").read_text())
    assert report["status"] == "failed" and report["data"]["read"] == 300, "failed after preparing"
    assert [p for p in cache_root.iterdir()] == [], "removed after a failed run too"

    kept = dict(config, name="kept")
    kept["data"] = dict(config["data"], cache={"keep": True})
    run(kept).assert_success()
    assert len(list(cache_root.iterdir())) == 1


def test_cache_list_and_clear(run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from privet.cli import cli

    monkeypatch.setenv("PRIVET_KEY", new_key_text())
    config = _in_process(_pipeline(tmp_path, epochs=1), tmp_path)
    run(config).assert_success()
    run(dict(config, name="plain", security={})).assert_success()
    runs = str(tmp_path / "runs")
    cli_run = CliRunner().invoke

    listed = cli_run(cli, ["cache", "list", "--runs-dir", runs, "--json"])
    assert listed.exit_code == 0, listed.output
    entries = {e["encrypted"]: e for e in json.loads(listed.output)}
    assert set(entries) == {True, False}
    assert entries[True]["sources"] is None and MARKER not in listed.output
    assert entries[False]["sources"] == [str(tmp_path / "data.jsonl")]
    assert all(e["size"] > 0 for e in entries.values())

    assert cli_run(cli, ["cache", "clear", "--runs-dir", runs, "nope"]).exit_code != 0
    kept = cli_run(cli, ["cache", "clear", "--runs-dir", runs, "--older-than", "1d"])
    assert kept.exit_code == 0 and "nothing to remove" in kept.output
    one = cli_run(cli, ["cache", "clear", "--runs-dir", runs, entries[True]["fingerprint"]])
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in (tmp_path / "runs" / ".cache").iterdir()) == \
        [entries[False]["fingerprint"]]
    os.utime(tmp_path / "runs" / ".cache" / entries[False]["fingerprint"] / "meta.json",
             (0, 0))  # unused since 1970
    old = cli_run(cli, ["cache", "clear", "--runs-dir", runs, "--older-than", "7d"])
    assert old.exit_code == 0 and list((tmp_path / "runs" / ".cache").iterdir()) == []
