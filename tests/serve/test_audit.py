"""The audit log attacked: every edit, deletion, insertion, reordering, cut, forged line,
wrong key and removed checkpoint makes ``verify_log`` fail naming the first bad line;
threads, crashes and rotation keep one valid chain."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privet.audit import AuditLog, open_inputs, verify_log
from privet.audit import files as files_module
from privet.audit import writer as writer_module
from privet.audit.entry import canonical, entry_hmac, line_hash, sign
from privet.crypto import AuthenticationError
from privet.errors import AuditError, PrivetError

KEY = bytes(range(32))


def record(i: int, **extra) -> dict:
    return {"subject": f"user{i % 3}", "role": "analyst", "model": "demo",
            "bundle_sha256": "ab" * 32, "request_id": f"req-{i}", "input_sha256": "cd" * 32,
            "inputs": None, "output": [0.25, i], "latency_ms": 1.5, "status": 200,
            "reason": None, **extra}


def make_log(path: Path, n: int, **options) -> Path:
    with AuditLog(path, hmac_key=KEY, **options) as log:
        for i in range(n):
            log.append(record(i))
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, rows: list[bytes]) -> None:
    path.write_bytes(b"".join(rows))


def failure(path: Path, **kw) -> AuditError:
    with pytest.raises(AuditError) as info:
        verify_log(path, hmac_key=kw.pop("key", KEY), **kw)
    assert isinstance(info.value, PrivetError) and "\n" not in str(info.value)
    return info.value


def rekeyed(entry: dict, signing_key=None) -> bytes:
    """What an attacker holding the HMAC key (not the signing key) can write."""
    entry = {k: v for k, v in entry.items() if k != "hmac"}
    if signing_key is not None:
        entry = sign({k: v for k, v in entry.items() if k not in ("sig", "key_id")}, signing_key)
    entry["hmac"] = entry_hmac(KEY, entry)
    return canonical(entry) + b"\n"


# -- a log as written -------------------------------------------------------------------------


def test_a_log_verifies_with_its_chain_modes_and_signed_checkpoints(tmp_path):
    signing = Ed25519PrivateKey.generate()
    path = make_log(tmp_path / "private" / "audit.log", 10, signing_key=signing, checkpoint_every=4)

    summary = verify_log(path, hmac_key=KEY, public_key=signing.public_key())

    assert (summary.entries, summary.files, summary.closed) == (10, 1, True)
    assert summary.checkpoints == 4 == summary.signed  # open, after 4 and 8, close
    assert summary["entries"] == 10 and summary.line().startswith("ok: 10 entries in 1 file")
    entries = [json.loads(row) for row in lines(path)]
    assert [e["seq"] for e in entries] == list(range(1, 15))
    assert entries[0]["prev"] == "0" * 64
    assert all(b["prev"] == line_hash(a.rstrip(b"\n")) for a, b in zip(lines(path), entries[1:]))
    assert entries[1]["time"].endswith("Z") and entries[1]["request_id"] == "req-0"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_append_returns_the_entry_it_wrote_and_refuses_reserved_fields(tmp_path):
    with AuditLog(tmp_path / "audit.log", hmac_key=KEY) as log:
        entry = log.append(record(7, status=403, reason="role"))
        assert entry["seq"] == log.seq == 2 and entry["hmac"] == entry_hmac(KEY, entry)
        with pytest.raises(ValueError, match="seq"):
            log.append({"seq": 99})
    with pytest.raises(AuditError, match="closed"):
        log.append(record(8))
    with pytest.raises(AuditError, match="fsync policy 'sometimes'"):
        AuditLog(tmp_path / "other.log", hmac_key=KEY, fsync="sometimes")
    with pytest.raises(AuditError, match="Ed25519 private key"):
        AuditLog(tmp_path / "other.log", hmac_key=KEY, signing_key=b"not a key")
    assert not (tmp_path / "other.log").exists()


def test_reopening_continues_the_chain(tmp_path):
    path = make_log(tmp_path / "audit.log", 3)
    make_log(path, 4)

    summary = verify_log(path, hmac_key=KEY)

    assert (summary.entries, summary.checkpoints, summary.last_seq) == (7, 4, 11)


# -- attacks on lines ---------------------------------------------------------------------------


def _edit_field(rows):
    rows[4] = rows[4].replace(b'"status":200', b'"status":500')


def _add_space(rows):
    rows[4] = rows[4].replace(b'","', b'", "', 1)


def _delete(rows):
    del rows[4]


def _forge_with_right_prev(rows):
    prev = line_hash(rows[3].rstrip(b"\n"))
    forged = {**json.loads(rows[4]), "prev": prev, "subject": "mallory", "hmac": "00" * 32}
    rows.insert(4, canonical(forged) + b"\n")


def _swap(rows):
    rows[4], rows[5] = rows[5], rows[4]


def _replay(rows):
    rows.insert(4, rows[3])


def _edit_and_rekey(rows):  # line 5 is valid alone; line 6's prev no longer matches
    rows[4] = rekeyed({**json.loads(rows[4]), "status": 500})


def _cut_a_line(rows):
    rows[4] = rows[4][:40] + b"\n"


@pytest.mark.parametrize("attack, line, words", [
    (_edit_field, 5, "edited or forged"),
    (_add_space, 5, "edited"),
    (_delete, 5, "deleted: entries seq 5..5"),
    (_forge_with_right_prev, 5, "edited or forged"),
    (_swap, 5, "reordered: seq 5 belongs here but is at line 6"),
    (_replay, 5, "reordered or inserted"),
    (_edit_and_rekey, 6, "inserted or replaced"),
    (_cut_a_line, 5, "edited"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_tampering_names_the_first_bad_line(tmp_path, attack, line, words):
    path = make_log(tmp_path / "audit.log", 10)
    rows = lines(path)
    attack(rows)
    write_lines(path, rows)

    err = failure(path)

    assert str(err).startswith(f"{path}:{line}: ") and words in str(err)
    assert (err.file, err.line) == (str(path), line)


def test_a_wrong_hmac_key_fails_at_the_first_line(tmp_path):
    path = make_log(tmp_path / "audit.log", 3)

    err = failure(path, key=os.urandom(32))

    assert str(err).startswith(f"{path}:1: HMAC mismatch: wrong audit key")


def test_removing_the_tail_of_a_closed_log_shows_it_is_not_closed(tmp_path):
    path = make_log(tmp_path / "audit.log", 5)
    write_lines(path, lines(path)[:-2])

    summary = verify_log(path, hmac_key=KEY)

    assert summary.entries == 4 and not summary.closed and "not closed" in summary.line()


# -- signatures --------------------------------------------------------------------------------


@pytest.fixture
def signed_log(tmp_path):
    signing = Ed25519PrivateKey.generate()
    return make_log(tmp_path / "audit.log", 9, signing_key=signing, checkpoint_every=3), signing


def test_a_wrong_public_key_fails_at_the_first_checkpoint(signed_log):
    path, _ = signed_log

    err = failure(path, public_key=Ed25519PrivateKey.generate().public_key())

    assert str(err).startswith(f"{path}:1: bad signature: signed by another key")


def test_a_checkpoint_changed_and_rekeyed_fails_its_signature(signed_log):
    path, _ = signed_log
    rows = lines(path)
    assert json.loads(rows[4])["kind"] == "checkpoint"
    rows[4] = rekeyed({**json.loads(rows[4]), "every": 1000})
    write_lines(path, rows)

    err = failure(path, public_key=signed_log[1].public_key())

    assert str(err).startswith(f"{path}:5: bad signature: the checkpoint was changed")


def test_a_checkpoint_removed_by_someone_with_the_hmac_key_is_missed(signed_log):
    path, signing = signed_log
    rows = lines(path)
    del rows[4]  # the checkpoint after entries 1-3; then re-chain and re-key the rest
    prev, out = line_hash(rows[3].rstrip(b"\n")), rows[:4]
    for row in rows[4:]:
        entry = json.loads(row)
        entry.update(prev=prev, seq=entry["seq"] - 1)
        out.append(rekeyed(entry))  # later checkpoints' signatures break too, but later
        prev = line_hash(out[-1].rstrip(b"\n"))
    write_lines(path, out)
    assert verify_log(path, hmac_key=KEY).entries == 9  # the HMAC chain alone is fooled

    err = failure(path, public_key=signing.public_key())

    assert str(err).startswith(f"{path}:5: a signed checkpoint is missing: 4 entries")


def test_an_unsigned_log_fails_when_a_public_key_is_given(tmp_path):
    path = make_log(tmp_path / "audit.log", 2)

    err = failure(path, public_key=Ed25519PrivateKey.generate().public_key())

    assert str(err).startswith(f"{path}:1: bad signature: this checkpoint is not signed")


# -- rotation ----------------------------------------------------------------------------------


@pytest.fixture
def rotated_log(tmp_path):
    path = make_log(tmp_path / "audit.log", 24, max_bytes=1500)
    files = sorted(tmp_path.glob("audit.log.*"), key=lambda p: int(p.suffix[1:]))
    assert len(files) >= 3
    return path, files


def test_rotation_keeps_one_chain_across_files(rotated_log):
    path, files = rotated_log
    make_log(path, 3, max_bytes=1500)  # reopened: continues from the newest file

    summary = verify_log(path, hmac_key=KEY)

    assert summary.entries == 27 and summary.files == len(list(path.parent.glob("audit.log*")))
    assert all(f.stat().st_size <= 1500 + 600 for f in files)
    first = json.loads(lines(files[1])[0])
    assert first["prev"] == line_hash(lines(files[0])[-1].rstrip(b"\n"))


def test_a_deleted_middle_file_is_named(rotated_log):
    path, files = rotated_log
    files[1].unlink()

    err = failure(path)

    assert str(err).startswith(f"{files[2]}:1: audit.log.2 is missing")


def test_a_deleted_first_file_is_named(rotated_log):
    path, files = rotated_log
    files[0].unlink()

    assert str(failure(path)).startswith(f"{files[1]}:1: audit.log.1 is missing")


def test_a_deleted_last_rotated_file_breaks_the_chain_at_the_live_file(rotated_log):
    path, files = rotated_log
    files[-1].unlink()

    err = failure(path)

    assert str(err).startswith(f"{path}:1: deleted: entries seq")


def test_a_rotated_file_cut_short_is_caught_at_the_next_file(rotated_log):
    path, files = rotated_log
    write_lines(files[0], lines(files[0])[:-2])

    err = failure(path)

    assert str(err).startswith(f"{files[1]}:1: deleted") and "end of the previous file" in str(err)


def test_a_rotated_file_with_a_partial_last_line_is_refused(rotated_log):
    path, files = rotated_log
    files[0].write_bytes(files[0].read_bytes()[:-10])

    assert str(failure(path)).startswith(f"{files[0]}:")


@pytest.mark.parametrize("block", [5, 16, 1 << 16])
def test_the_tail_is_found_whatever_the_read_block_size(tmp_path, monkeypatch, block):
    monkeypatch.setattr(files_module, "_BLOCK", block)
    path = tmp_path / "f"
    for content, last in [(b"", None), (b"partial", None), (b"one\n", b"one"),
                          (b"a\n" + b"x" * 40 + b"\n", b"x" * 40),
                          (b"a\nbb\n" + b"y" * 30 + b"\ncut", b"y" * 30)]:
        path.write_bytes(content)
        tail = files_module.read_tail(path)
        assert tail.last_line == last
        assert tail.size == len(content) and tail.partial == (3 if content.endswith(b"cut") else
                                                               7 if content == b"partial" else 0)
        if last is not None:
            assert content[tail.last_start:tail.complete_end] == last + b"\n"


# -- concurrency, crashes, refusals ---------------------------------------------------------------


def test_200_concurrent_appends_all_land_in_one_valid_chain(tmp_path):
    path = tmp_path / "audit.log"
    with AuditLog(path, hmac_key=KEY, fsync="interval") as log:
        def work(t: int) -> None:
            for i in range(25):
                log.append(record(t * 25 + i))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    summary = verify_log(path, hmac_key=KEY)

    assert summary.entries == 200
    ids = {json.loads(r).get("request_id") for r in lines(path)} - {None}
    assert ids == {f"req-{i}" for i in range(200)}


def test_a_partial_last_line_verifies_up_to_it_and_reopening_cuts_it(tmp_path):
    path = make_log(tmp_path / "audit.log", 5)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"hmac":"3f2a","kind":"requ')  # killed mid-write

    summary = verify_log(path, hmac_key=KEY)
    assert summary.incomplete_tail and summary.entries == 5
    assert "last line incomplete (crash)" in summary.line()

    make_log(path, 2)
    summary = verify_log(path, hmac_key=KEY)
    assert (summary.entries, summary.incomplete_tail, summary.closed) == (7, False, True)
    reopened = json.loads(lines(path)[len(whole.splitlines())])
    assert reopened["event"] == "open" and reopened["recovered_bytes"] == 27


def test_a_log_with_a_tampered_tail_refuses_to_append(tmp_path):
    path = make_log(tmp_path / "audit.log", 4)
    rows = lines(path)
    rows[-1] = rows[-1].replace(b'"event":"close"', b'"event":"clos3"')
    write_lines(path, rows)
    before = path.read_bytes()

    with pytest.raises(AuditError) as info:
        AuditLog(path, hmac_key=KEY)

    assert str(info.value).startswith(f"{path}:{len(rows)}: the last entry does not verify")
    assert path.read_bytes() == before


def test_a_second_writer_is_refused_while_the_log_is_open(tmp_path):
    path = tmp_path / "audit.log"
    with AuditLog(path, hmac_key=KEY):
        with pytest.raises(AuditError, match="another process"):
            AuditLog(path, hmac_key=KEY)
    AuditLog(path, hmac_key=KEY).close()  # released on close


_APPENDER = textwrap.dedent("""
    import sys
    from privet.audit import AuditLog
    log = AuditLog(sys.argv[1], hmac_key=bytes(range(32)), fsync=sys.argv[2])
    i = 0
    while True:
        log.append({"subject": "load", "request_id": f"req-{i}", "status": 200,
                    "output": list(range(i % 50))})
        i += 1
        if i == 50:
            print("running", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "never"])
def test_sigkill_mid_load_leaves_a_log_valid_to_its_last_entry(tmp_path, fsync):
    path = tmp_path / "audit.log"
    proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), fsync],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "running"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()

    killed = verify_log(path, hmac_key=KEY)
    assert killed.entries >= 50 and not killed.closed

    make_log(path, 3)
    summary = verify_log(path, hmac_key=KEY)
    assert summary.entries == killed.entries + 3 and summary.closed


# -- inputs and durability -------------------------------------------------------------------------


def test_inputs_are_stored_only_sealed_under_the_inputs_key(tmp_path):
    inputs_key = os.urandom(32)
    path = tmp_path / "audit.log"
    with AuditLog(path, hmac_key=KEY, inputs_key=inputs_key) as log:
        entry = log.append(record(1, inputs=[{"text": "SECRET-PATIENT-42"}]))
        log.append(record(2))

    assert b"SECRET-PATIENT-42" not in path.read_bytes()
    assert "inputs" not in entry
    assert open_inputs(entry, inputs_key) == [{"text": "SECRET-PATIENT-42"}]
    with pytest.raises(AuthenticationError):
        open_inputs(entry, os.urandom(32))
    assert verify_log(path, hmac_key=KEY).entries == 2


@pytest.mark.parametrize("policy, expected", [("always", 11), ("interval", 2), ("never", 0)])
def test_fsync_policy_sets_how_often_the_log_reaches_the_disk(tmp_path, monkeypatch, policy,
                                                              expected):
    calls = []
    monkeypatch.setattr(writer_module, "_fdatasync", lambda fd: calls.append(fd))
    log = AuditLog(tmp_path / "audit.log", hmac_key=KEY, fsync=policy,
                   fsync_every_lines=4, fsync_interval_ms=60_000)
    for i in range(10):
        log.append(record(i))
    during = len(calls)
    log.close()

    assert during == expected  # always: open + 10 appends; interval: lines 4 and 8
    assert len(calls) == during + (policy != "never")
