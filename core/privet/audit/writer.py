"""``AuditLog``: appends hash-chained, HMAC'd entries to a JSON Lines file, thread-safe.

Why this shape: every request a server answers must leave a line that nobody can edit,
drop, insert or reorder without ``privet audit verify`` noticing (see ``entry.py``), and a
crash may cost at most the line being written. So each line is handed to the kernel in
one ``write`` on an ``O_APPEND`` descriptor, under one lock (the chain is a sequence);
``fsync`` runs outside that lock, so concurrent requests share one disk flush (group
commit). One process at a time: an advisory lock on ``.LOG.lock`` keeps a second server
process from forking the chain.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import AuditError
from ..storage import Storage
from .entry import (CHECKPOINT, GENESIS, REQUEST, RESERVED, canonical, entry_hmac, hmac_ok,
                    line_hash, seal_inputs, sign, utc_now)
from .files import read_tail, line_number, rotated

FSYNC_POLICIES = ("always", "interval", "never")
_fdatasync = getattr(os, "fdatasync", os.fsync)


class AuditLog:
    """An append-only audit log at ``path`` (see docs/audit.md).

    ``hmac_key`` authenticates every line; ``signing_key`` (Ed25519) signs a checkpoint every
    ``checkpoint_every`` entries and at open, rotation and close; ``fsync`` is ``always``
    (each append is on disk when it returns), ``interval`` (every ``fsync_every_lines``
    lines or ``fsync_interval_ms``) or ``never``; past ``max_bytes`` the file is renamed to
    ``LOG.N`` and a new one continues the chain; ``inputs`` are sealed under ``inputs_key``.
    """

    def __init__(self, path: str | os.PathLike[str], hmac_key: bytes, signing_key: Any = None,
                 checkpoint_every: int = 1000, fsync: str = "always", max_bytes: int | None = None,
                 inputs_key: bytes | None = None, *, fsync_interval_ms: int = 1000,
                 fsync_every_lines: int = 100) -> None:
        _check_options(hmac_key, checkpoint_every, fsync, max_bytes, inputs_key)
        _check_signing_key(signing_key)
        self.path = Path(path)
        self._key, self._signing, self._inputs_key = bytes(hmac_key), signing_key, inputs_key
        self._every = int(checkpoint_every) if signing_key is not None else 0
        self._policy, self._max_bytes = fsync, max_bytes
        self._sync_every, self._sync_interval = max(1, fsync_every_lines), fsync_interval_ms / 1000
        self._storage = Storage(self.path.parent, cipher=None)
        self._storage.makedirs()
        self._lock, self._sync_lock = threading.Lock(), threading.Lock()
        self._written = self._synced = self._since = 0
        self._last_sync = time.monotonic()
        self._closed = False
        self._stop = threading.Event()
        self._lock_fd = _lock_process(self._storage, self.path)
        try:
            dropped = self._continue_chain()
            with self._lock:
                self._checkpoint("open", **({"recovered_bytes": dropped} if dropped else {}))
            self._sync(self._written)
        except BaseException:
            if getattr(self, "_fd", None) is not None:
                os.close(self._fd)
            self._release()
            raise
        if fsync == "interval":
            threading.Thread(target=self._sync_loop, name="privet-audit-fsync", daemon=True).start()

    # -- public ---------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The sequence number of the last entry written."""
        return self._seq

    @property
    def head(self) -> str:
        """The chain head: SHA-256 of the last line written."""
        return self._prev

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one request's entry (adds kind, seq, time, prev, hmac); returns the entry."""
        if not isinstance(record, dict):
            raise TypeError("an audit record is a dict")
        clash = RESERVED.intersection(record)
        if clash:
            raise ValueError(f"audit record fields {sorted(clash)} are set by the log itself")
        body = {k: v for k, v in record.items() if k != "inputs"}
        inputs = record.get("inputs")
        if inputs is not None:  # sealed outside the lock: AES-GCM is the costly part
            if self._inputs_key is not None:
                body["inputs_sealed"] = seal_inputs(inputs, self._inputs_key)
            else:
                body["inputs"] = inputs
        with self._lock:
            if self._closed:
                raise AuditError("the audit log is closed", file=str(self.path))
            entry = self._write_entry(REQUEST, body)
            self._since += 1
            if self._every and self._since >= self._every:
                self._checkpoint("interval")
            written = self._written
        self._sync(written)
        return entry

    def close(self) -> None:
        """Write the closing checkpoint, flush it to disk, release the file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            try:
                self._checkpoint("close")
            finally:
                self._closed = True
                self._stop.set()
                with self._sync_lock:
                    if self._policy != "never":
                        _fdatasync(self._fd)
                    os.close(self._fd)
                    self._synced = self._written
                self._release()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the chain ------------------------------------------------------------------------

    def _continue_chain(self) -> int:
        """Find the chain head (the last complete entry, in the live file or the newest
        rotated one), then cut a crash's partial line off the live file; the bytes cut."""
        self._fd = self._storage.open_fd(self.path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        tail = read_tail(self.path)
        where, last = self.path, tail
        if tail.last_line is None:
            older = rotated(self.path)
            if older:
                where, last = older[-1][1], read_tail(older[-1][1])
        self._prev, self._seq = GENESIS, 0
        if last.last_line is not None:
            entry = _trusted_tail(last.last_line, self._key)
            if entry is None:
                raise AuditError("the last entry does not verify (edited or forged, or another "
                                 "audit key): refusing to append; check the log with 'privet "
                                 "audit verify'", file=str(where),
                                 line=line_number(where, last.last_start))
            self._prev, self._seq = line_hash(last.last_line), entry["seq"]
        if tail.partial:
            os.ftruncate(self._fd, tail.complete_end)
            _fdatasync(self._fd)
        self._size = tail.complete_end
        return tail.partial

    def _checkpoint(self, event: str, **extra: Any) -> None:
        self._write_entry(CHECKPOINT, {"event": event, "every": self._every, **extra})
        self._since = 0

    def _write_entry(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        entry = {**body, "kind": kind, "seq": self._seq + 1, "time": utc_now(), "prev": self._prev}
        if kind == CHECKPOINT and self._signing is not None:
            entry = sign(entry, self._signing)
        entry["hmac"] = entry_hmac(self._key, entry)
        line = canonical(entry)
        if (kind == REQUEST and self._max_bytes and self._size
                and self._size + len(line) + 1 > self._max_bytes):
            self._rotate()
            return self._write_entry(kind, body)
        self._write(line + b"\n")
        self._prev, self._seq = line_hash(line), self._seq + 1
        return entry

    def _write(self, data: bytes) -> None:
        """One line to the kernel; on failure the file is cut back to its last whole line."""
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as err:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise AuditError(f"cannot write the audit log: {err.strerror or err}",
                             file=str(self.path)) from err
        self._size += len(data)
        self._written += 1

    def _rotate(self) -> None:
        """Seal the live file with a checkpoint, rename it to ``LOG.N``, start a new one."""
        self._checkpoint("rotate")
        older = rotated(self.path)
        number = older[-1][0] + 1 if older else 1
        with self._sync_lock:
            _fdatasync(self._fd)
            os.close(self._fd)
            self._storage.rename(self.path.name, f"{self.path.name}.{number}")
            self._fd = self._storage.open_fd(self.path.name,
                                             os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._size, self._synced = 0, self._written

    # -- durability -----------------------------------------------------------------------

    def _sync(self, written: int, *, force: bool = False) -> None:
        """fsync per the policy; one flush covers every line written before it (group commit)."""
        if self._policy == "never" and not force:
            return
        with self._sync_lock:
            if self._synced >= written:
                return
            due = (force or self._policy == "always"
                   or self._written - self._synced >= self._sync_every
                   or time.monotonic() - self._last_sync >= self._sync_interval)
            if due:
                target = self._written
                _fdatasync(self._fd)
                self._synced, self._last_sync = target, time.monotonic()

    def _sync_loop(self) -> None:
        """``interval``: flush what a quiet period left unsynced, every interval."""
        while not self._stop.wait(self._sync_interval):
            with self._lock:
                if self._closed:
                    return
                written = self._written
            self._sync(written, force=True)

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def _check_options(hmac_key: Any, every: Any, fsync: str, max_bytes: Any, inputs_key: Any) -> None:
    if not isinstance(hmac_key, (bytes, bytearray)) or len(hmac_key) < 16:
        raise AuditError("the audit HMAC key must be at least 16 bytes")
    if not isinstance(every, int) or every < 0:
        raise AuditError(f"checkpoint_every must be a whole number >= 0, not {every!r}")
    if fsync not in FSYNC_POLICIES:
        raise AuditError(f"fsync policy {fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes <= 0):
        raise AuditError(f"max_bytes must be a positive number of bytes, not {max_bytes!r}")
    if inputs_key is not None and (not isinstance(inputs_key, bytes) or len(inputs_key) != 32):
        raise AuditError("the audit inputs key must be exactly 32 bytes")


def _check_signing_key(signing_key: Any) -> None:
    if signing_key is None:
        return
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not isinstance(signing_key, Ed25519PrivateKey):
        raise AuditError("the audit signing key must be an Ed25519 private key (make one with "
                         "'privet keys new-signing')")


def _trusted_tail(line: bytes, key: bytes) -> dict[str, Any] | None:
    """The last entry when it is canonical, carries a valid HMAC and a sequence number."""
    import json

    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if (not isinstance(entry, dict) or canonical(entry) != line or not hmac_ok(key, entry)
            or not isinstance(entry.get("seq"), int) or entry["seq"] < 1):
        return None
    return entry


def _lock_process(storage: Storage, path: Path) -> int | None:
    """Hold ``.LOG.lock`` (flock): a second writer would fork the chain."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows has no advisory locks
        return None
    fd = storage.open_fd(f".{path.name}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditError("another process has this audit log open for writing",
                         file=str(path)) from None
    return fd
