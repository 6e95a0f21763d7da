"""The audit log's line format: canonical JSON, the hash chain, the HMAC and the signature.

Why canonical JSON (sorted keys, no spaces, ASCII only, no NaN): a line's SHA-256 and HMAC
must be reproducible by anyone who re-reads it, so the verifier re-encodes each parsed
line and refuses one whose bytes differ. Each line is::

    {"hmac": HMAC-SHA256(hmac_key, canonical(entry without hmac)),
     "kind": "request" | "checkpoint", "prev": sha256(previous line), "seq": 1, 2, ...,
     "time": "2026-12-02T06:11:09.123456Z", ...the request's fields...}

A checkpoint also has ``event`` (open, interval, rotate, close), ``every`` (the interval)
and, with a signing key, ``key_id`` and ``sig``: Ed25519 over canonical(entry without sig
and hmac), whose ``prev`` is the chain head. The primitives are the standard library's
``hmac``/``hashlib`` and ``cryptography``'s Ed25519 and AES-GCM (``privet.crypto.Cipher``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: ``prev`` of the very first entry of a log.
GENESIS = "0" * 64
REQUEST, CHECKPOINT = "request", "checkpoint"
#: Fields the log sets itself; a record passed to ``append`` may not contain them.
RESERVED = frozenset({"seq", "time", "prev", "hmac", "kind", "sig", "key_id", "event", "every",
                      "inputs_sealed"})
#: Where the default key reference of ``privet audit verify`` (and the server) points.
DEFAULT_KEY_REF = "env:PRIVET_AUDIT_KEY"


def canonical(entry: dict[str, Any]) -> bytes:
    """The one byte encoding of ``entry`` that hashes and HMACs are computed over."""
    try:
        text = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False, default=_plain)
    except ValueError:  # NaN or infinity in a model's output: kept, as text
        text = json.dumps(_finite(entry), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False, default=_plain)
    return text.encode("ascii")


def _plain(value: Any) -> Any:
    """numpy arrays and scalars as lists and numbers (what a server's outputs often are)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"an audit entry holds only JSON values, not {type(value).__name__}")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


def line_hash(line: bytes) -> str:
    """The chain link: SHA-256 of a whole canonical line (without its newline)."""
    return hashlib.sha256(line).hexdigest()


def entry_hmac(key: bytes, entry: dict[str, Any]) -> str:
    """HMAC-SHA256 over the canonical entry without its ``hmac`` field."""
    body = {k: v for k, v in entry.items() if k != "hmac"}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def hmac_ok(key: bytes, entry: dict[str, Any]) -> bool:
    given = entry.get("hmac")
    return isinstance(given, str) and hmac.compare_digest(given, entry_hmac(key, entry))


def signed_payload(entry: dict[str, Any]) -> bytes:
    """What a checkpoint's Ed25519 signature covers: the entry without ``sig`` and ``hmac``."""
    return canonical({k: v for k, v in entry.items() if k not in ("sig", "hmac")})


def key_id(public_key: Any) -> str:
    """A short public name of an Ed25519 key (first 16 hex digits of its raw bytes' SHA-256)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(entry: dict[str, Any], signing_key: Any) -> dict[str, Any]:
    """``entry`` with ``key_id`` and ``sig`` (base64 Ed25519 over :func:`signed_payload`)."""
    entry = {**entry, "key_id": key_id(signing_key.public_key())}
    entry["sig"] = base64.b64encode(signing_key.sign(signed_payload(entry))).decode("ascii")
    return entry


def signature_ok(entry: dict[str, Any], public_key: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(entry["sig"], validate=True), signed_payload(entry))
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False
    return True


def utc_now() -> str:
    """RFC 3339 UTC time with microseconds (``2026-12-02T06:11:09.123456Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def seal_inputs(inputs: Any, inputs_key: bytes) -> str:
    """The request's inputs, AES-256-GCM sealed (``privet.crypto.Cipher``), as base64 text."""
    from ..crypto import Cipher

    return base64.b64encode(Cipher(inputs_key).encrypt(canonical({"inputs": inputs}))).decode()


def open_inputs(entry: dict[str, Any], inputs_key: bytes) -> Any:
    """The inputs an entry holds: decrypted with ``inputs_key`` when sealed, else as stored.

    A wrong key or changed bytes raise ``privet.crypto.AuthenticationError``.
    """
    from ..crypto import Cipher

    sealed = entry.get("inputs_sealed")
    if sealed is None:
        return entry.get("inputs")
    name = f"entry seq {entry.get('seq')}"
    plain = Cipher(inputs_key).decrypt(base64.b64decode(sealed), name=name)
    return json.loads(plain)["inputs"]


def load_verify_key(path: str | Path) -> Any:
    """The Ed25519 public key in PEM file ``path`` (``KEY.pub`` of ``privet keys new-signing``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ..errors import AuditError

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as err:
        raise AuditError(f"cannot read the public key ({err.strerror or err})",
                         file=str(path)) from None
    except (ValueError, TypeError):
        raise AuditError("not a PEM public key", file=str(path)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError("not an Ed25519 public key (make a pair with 'privet keys new-signing')",
                         file=str(path))
    return key
