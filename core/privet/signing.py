"""Signed export bundles: a manifest of every file's SHA-256, signed with Ed25519.

Why: a bundle is copied between machines and people; whoever can write to it on the
way could swap the model or its preprocessing. ``privet export --sign KEY`` writes
``manifest.json`` into the bundle (the on-disk bytes' digests, so an encrypted bundle is
verified without its key) with an Ed25519 signature (``cryptography``) over its canonical
JSON; ``privet predict --verify-key PUB`` refuses a bundle whose manifest does not verify
or whose files differ from it (changed, added, removed), naming the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import PrivetError
from .storage import Storage

MANIFEST = "manifest.json"
FORMAT = "privet-signed-manifest"
VERSION = 1


class SignatureError(PrivetError):
    """A bundle that is unsigned, or whose signature or files do not verify."""


def new_signing_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, 0600) to ``path`` and its public key to
    ``path.pub``; an existing file is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Path(path)
    public = private.with_name(private.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise SignatureError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    Storage(private.parent, cipher=None).write_bytes(private.name, pem)
    Storage(public.parent, cipher=None).write_bytes(public.name, pub)
    return private, public


def load_signing_key(path: Path) -> Any:
    """The Ed25519 private key in PEM file ``path``; refused when others may read it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        data = path.read_bytes()
    except OSError as err:
        raise SignatureError(f"{path}: cannot read the signing key ({err.strerror or err})") from err
    if os.name == "posix" and mode & 0o077:
        raise SignatureError(f"{path}: the signing key may be read by others (mode {mode:04o}); "
                             f"chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key; make one with 'privet keys new-signing'")
    return key


def _load_public(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise SignatureError(f"{path}: cannot read the public key ({err.strerror or err})") from err
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file's bytes on disk (sealed bytes, for an encrypted bundle)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            raise SignatureError(f"{p}: a symlink inside the bundle; refusing it")
        if p.is_file() and rel != MANIFEST:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _payload(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _key_id(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_bundle(folder: str | Path, key_file: str | Path) -> Path:
    """Write ``folder/manifest.json``: every file's digest, signed with ``key_file``."""
    folder, key = Path(folder), load_signing_key(Path(key_file))
    body = {"format": FORMAT, "version": VERSION, "algorithm": "ed25519",
            "key_id": _key_id(key.public_key()), "files": _digests(folder)}
    signature = base64.b64encode(key.sign(_payload(body))).decode()
    return Storage(folder, cipher=None).write_json(MANIFEST, {**body, "signature": signature})


def verify_bundle(folder: str | Path, public_key: str | Path) -> dict[str, str]:
    """Check the bundle's signed manifest with ``public_key`` and every file against it;
    one :class:`SignatureError` naming the file otherwise. Returns the verified digests."""
    from cryptography.exceptions import InvalidSignature

    folder, public = Path(folder), _load_public(Path(public_key))
    path = folder / MANIFEST
    if not path.is_file():
        raise SignatureError(f"{path}: the bundle is not signed (no {MANIFEST}); refusing it "
                             f"with --verify-key")
    try:
        manifest = json.loads(path.read_bytes())
        body = {k: v for k, v in manifest.items() if k != "signature"}
        signature = base64.b64decode(manifest["signature"], validate=True)
        files = body["files"]
        if body.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("not a signed manifest")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SignatureError(f"{path}: damaged signed manifest ({err}); refusing the bundle") from None
    try:
        public.verify(signature, _payload(body))
    except InvalidSignature:
        raise SignatureError(f"{path}: signature verification failed: the manifest was changed "
                             f"or signed with another key; refusing the bundle") from None
    actual = _digests(folder)
    for name in sorted(set(files) | set(actual)):
        if name not in actual:
            raise SignatureError(f"{folder / name}: listed in the signed manifest but missing; "
                                 f"refusing the bundle")
        if name not in files:
            raise SignatureError(f"{folder / name}: not in the signed manifest (added after "
                                 f"signing); refusing the bundle")
        if actual[name] != files[name]:
            raise SignatureError(f"{folder / name}: changed since the bundle was signed "
                                 f"(sha256 mismatch); refusing the bundle")
    return actual
