"""``privet audit verify`` through the real launcher: exit 0 and one summary line for a good
log, exit 2 and one line naming the file and first bad line for a tampered one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from privet.audit import AuditLog
from privet.signing import load_signing_key, new_signing_key

pytestmark = pytest.mark.slow  # each test starts the launcher

KEY = os.urandom(32)


def privet(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    base["PRIVET_LOAD_PLUGINS"] = ""  # the built-in key providers are enough; faster
    return subprocess.run([sys.executable, "-m", "privet", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


@pytest.fixture
def setup(tmp_path):
    """A signed log of 6 entries, its HMAC key file (0600) and its signing key pair."""
    key_file = tmp_path / "audit.key"
    key_file.write_text(base64.b64encode(KEY).decode())
    key_file.chmod(0o600)
    new_signing_key(tmp_path / "signing.pem")  # what 'privet keys new-signing' writes
    log = tmp_path / "logs" / "audit.log"
    with AuditLog(log, hmac_key=KEY, signing_key=load_signing_key(tmp_path / "signing.pem"),
                  checkpoint_every=2) as writer:
        for i in range(6):
            writer.append({"subject": "alice", "request_id": f"r{i}", "status": 200})
    return tmp_path, log


def test_a_good_log_exits_0_with_a_summary_line(setup):
    tmp_path, log = setup

    result = privet("audit", "verify", str(log), "--audit-key", "file:audit.key",
                    "--verify-key", "signing.pem.pub", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("ok: 6 entries in 1 file, 5 checkpoints (5 signed), "
                                     "last seq 11, closed")


def test_the_key_comes_from_the_environment_by_default_and_json_is_available(setup):
    tmp_path, log = setup

    result = privet("audit", "verify", str(log), "--json", cwd=tmp_path,
                    env={"PRIVET_AUDIT_KEY": base64.b64encode(KEY).decode()})

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["entries"], summary["checkpoints"], summary["signed"]) == (6, 5, 0)


def test_an_edited_line_exits_2_with_one_line_naming_it(setup):
    tmp_path, log = setup
    rows = log.read_bytes().splitlines(keepends=True)
    edited = rows[2].replace(b'"subject":"alice"', b'"subject":"mallo"')
    assert edited != rows[2]
    rows[2] = edited
    log.write_bytes(b"".join(rows))

    result = privet("audit", "verify", str(log), "--audit-key", "file:audit.key", cwd=tmp_path)

    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"privet: error: {log}:3: edited or forged: the HMAC does not match (an entry changed, "
        f"or one written without the audit key)"]


def test_another_signers_key_exits_2_with_bad_signature(setup):
    tmp_path, log = setup
    assert privet("keys", "new-signing", "other.pem", cwd=tmp_path).returncode == 0

    result = privet("audit", "verify", str(log), "--audit-key", "file:audit.key",
                    "--verify-key", "other.pem.pub", cwd=tmp_path)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"privet: error: {log}:1: bad signature: signed by another key")


def test_a_crashed_log_verifies_up_to_its_last_complete_entry(setup):
    tmp_path, log = setup
    log.write_bytes(log.read_bytes() + b'{"hmac":"12')

    result = privet("audit", "verify", str(log), "--audit-key", "file:audit.key", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "ok: 6 entries" in result.stdout and "last line incomplete (crash)" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--audit-key", "env:NO_SUCH_AUDIT_KEY"], "environment variable NO_SUCH_AUDIT_KEY is not set"),
    (["--audit-key", "file:audit.key", "--verify-key", "audit.key"], "not a PEM public key"),
])
def test_missing_or_wrong_keys_exit_2_with_one_line(setup, args, words):
    tmp_path, log = setup

    result = privet("audit", "verify", str(log), *args, cwd=tmp_path)

    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert words in result.stderr and "Traceback" not in result.stderr


def test_a_missing_log_exits_2(tmp_path, setup):
    result = privet("audit", "verify", "nowhere.log", "--audit-key", "file:audit.key", cwd=setup[0])

    assert result.returncode == 2
    assert result.stderr.strip() == "privet: error: nowhere.log: no such audit log"
