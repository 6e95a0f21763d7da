"""``verify_log``: re-check an audit log line by line and name the first line that is wrong.

For each line, in chain order across rotated files: it parses, it is canonical (its bytes
are exactly what the writer produced), its HMAC matches, its ``seq`` follows the previous
line's and its ``prev`` is the previous line's hash. With a public key, every checkpoint's
Ed25519 signature must verify and no more than ``every`` entries may pass between them. A
crash leaves at most one incomplete last line: the log is valid up to the entry before it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, NoReturn

from ..errors import AuditError
from .entry import CHECKPOINT, GENESIS, REQUEST, canonical, hmac_ok, key_id, line_hash, signature_ok
from .files import rotated


@dataclass
class AuditSummary:
    """What a verified log holds. Also readable as a mapping (``summary["entries"]``)."""

    entries: int = 0
    files: int = 0
    checkpoints: int = 0
    signed: int = 0
    lines: int = 0
    last_seq: int = 0
    closed: bool = False
    incomplete_tail: bool = False
    first_time: str | None = None
    last_time: str | None = None
    paths: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The one line ``privet audit verify`` prints."""
        files = "file" if self.files == 1 else "files"
        signed = f" ({self.signed} signed)" if self.signed else ""
        text = (f"ok: {self.entries} entries in {self.files} {files}, "
                f"{self.checkpoints} checkpoints{signed}, last seq {self.last_seq}")
        if self.incomplete_tail:
            return text + ", last line incomplete (crash): valid up to the entry before it"
        return text + (", closed" if self.closed else ", not closed (still open, or it crashed)")


def verify_log(path: str | os.PathLike[str], hmac_key: bytes,
               public_key: Any = None) -> AuditSummary:
    """Verify the log at ``path`` and its rotated files (a summary), or raise one
    :class:`AuditError` naming the first bad line."""
    path = Path(path)
    files = _chain_files(path)
    chain = _Chain(bytes(hmac_key), public_key)
    summary = AuditSummary(files=len(files), paths=[str(f) for f, _ in files])
    expected_number = 1
    for index, (file, number) in enumerate(files):
        if number is not None:
            if number != expected_number:
                raise AuditError(f"{path.name}.{expected_number} is missing: a rotated file of "
                                 f"the log was deleted", file=str(file), line=1)
            expected_number += 1
        for lineno, raw in _lines(file):
            if not raw.endswith(b"\n"):
                if index == len(files) - 1:
                    summary.incomplete_tail = True
                    break
                raise AuditError("incomplete line in a rotated file: the file was truncated",
                                 file=str(file), line=lineno)
            chain.check(file, lineno, raw[:-1], summary)
    summary.closed = chain.last_event == "close" and not summary.incomplete_tail
    return summary


def _chain_files(path: Path) -> list[tuple[Path, int | None]]:
    files: list[tuple[Path, int | None]] = [(p, n) for n, p in rotated(path)]
    if path.is_file():
        files.append((path, None))
    if not files:
        raise AuditError("no such audit log", file=str(path))
    return files


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with open(path, "rb") as fh:
            yield from enumerate(fh, 1)
    except OSError as err:
        raise AuditError(f"cannot read the audit log: {err.strerror or err}",
                         file=str(path)) from None


class _Chain:
    """The running state of one verification: the chain head and the checkpoint cadence."""

    def __init__(self, key: bytes, public_key: Any) -> None:
        self.key, self.public = key, public_key
        self.key_id = key_id(public_key) if public_key is not None else None
        self.prev, self.seq = GENESIS, 0
        self.every: int | None = None  # the cadence the last signed checkpoint promised
        self.since = 0
        self.last_event: str | None = None

    def check(self, file: Path, lineno: int, raw: bytes, summary: AuditSummary) -> None:
        """Check one complete line (without its newline) and advance the chain."""
        def bad(message: str) -> NoReturn:
            raise AuditError(message, file=str(file), line=lineno)

        entry = _parse(raw, bad)
        if not hmac_ok(self.key, entry):
            if summary.lines == 0:
                bad("HMAC mismatch: wrong audit key, or this entry was edited or forged")
            bad("edited or forged: the HMAC does not match (an entry changed, or one written "
                "without the audit key)")
        if entry["seq"] != self.seq + 1 or entry["prev"] != self.prev:
            bad(self._order_problem(file, lineno, entry))
        if entry["kind"] == CHECKPOINT:
            self._checkpoint(entry, bad)
            summary.checkpoints += 1
            summary.signed += int(self.public is not None)
        else:
            self._request(bad)
            summary.entries += 1
        self.last_event = entry.get("event") if entry["kind"] == CHECKPOINT else None
        self.prev, self.seq = line_hash(raw), entry["seq"]
        summary.lines += 1
        summary.last_seq = self.seq
        summary.first_time = summary.first_time or entry.get("time")
        summary.last_time = entry.get("time")

    def _checkpoint(self, entry: dict[str, Any], bad: Any) -> None:
        if self.public is None:
            return
        if "sig" not in entry:
            bad("bad signature: this checkpoint is not signed (written without a signing key, "
                "or its signature was removed)")
        if entry.get("key_id") != self.key_id:
            bad(f"bad signature: signed by another key (key id {entry.get('key_id')}, "
                f"expected {self.key_id})")
        if not signature_ok(entry, self.public):
            bad("bad signature: the checkpoint was changed after it was signed")
        every = entry.get("every")
        if not isinstance(every, int) or every < 0:
            bad("edited: a checkpoint without a valid 'every'")
        self.every, self.since = every, 0

    def _request(self, bad: Any) -> None:
        if self.public is None:
            return
        if self.every is None:
            bad("an entry before the first signed checkpoint (the log was not started with a "
                "signing key, or its opening checkpoint was removed)")
        self.since += 1
        if self.every and self.since > self.every:
            bad(f"a signed checkpoint is missing: {self.since} entries since the last one, "
                f"which promised one every {self.every} (a checkpoint was removed)")

    def _order_problem(self, file: Path, lineno: int, entry: dict[str, Any]) -> str:
        """Name what broke the chain here: a deletion, a reordering or an insertion."""
        expected, seq = self.seq + 1, entry["seq"]
        start = (f" (at the start of {file.name}: the end of the previous file was cut, or a "
                 f"rotated file was deleted)") if lineno == 1 else ""
        if seq == expected:
            return ("inserted or replaced: 'prev' is not the hash of the entry before; an entry "
                    "was edited and re-keyed, or inserted" + start)
        if seq < expected:
            return (f"reordered or inserted: seq {seq} comes after seq {expected - 1} (an entry "
                    f"was moved or replayed)")
        later = _find_seq(file, lineno, expected)
        if later is not None:
            return f"reordered: seq {expected} belongs here but is at line {later}"
        return f"deleted: entries seq {expected}..{seq - 1} are missing before this line" + start


def _parse(raw: bytes, bad: Any) -> dict[str, Any]:
    try:
        entry = json.loads(raw)
    except ValueError:
        bad("edited: not a JSON entry")
    if (not isinstance(entry, dict) or type(entry.get("seq")) is not int
            or not isinstance(entry.get("prev"), str)
            or entry.get("kind") not in (REQUEST, CHECKPOINT)):
        bad("edited: not an audit entry (kind, seq or prev missing)")
    if canonical(entry) != raw:
        bad("edited: the line's bytes are not the canonical form the writer produces")
    return entry


def _find_seq(file: Path, after: int, seq: int) -> int | None:
    """The line number of entry ``seq`` further down ``file`` (error path only)."""
    for lineno, raw in _lines(file):
        if lineno <= after:
            continue
        try:
            if json.loads(raw).get("seq") == seq:
                return lineno
        except (ValueError, AttributeError):
            continue
    return None
