"""Encryption at rest: a chunked AES-256-GCM file format, and the run's key.

Why chunks: one AES-GCM call is limited to about 64 GiB (and ``cryptography`` to 2 GiB
per call), and a file must be readable without holding two copies of it; so a file is
split into 1 MiB chunks, each sealed with AES-GCM, in the construction of age's STREAM and
Google Tink's streaming AEAD (documented in docs/security.md, "Encryption at rest"):

``header = MAGIC(7) | version(1) | chunk_size(4, big-endian) | salt(32) | nonce_prefix(7)``,
then chunk ``i`` = ``AESGCM(file_key).encrypt(nonce_i, plain_i, ad_i)`` (plain + 16-byte
tag), where ``file_key = HKDF-SHA256(key, salt, info)`` (a fresh key per file),
``nonce_i = nonce_prefix | i (4 bytes) | last (1 byte)`` and
``ad_i = header | i (8 bytes) | last (1 byte)``. Every chunk but the last holds exactly
``chunk_size`` bytes. Flipping a byte, truncating (the new last chunk was sealed with
``last = 0``), reordering chunks (``i`` is authenticated) or moving chunks between files
(another salt, so another file key) all fail authentication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PrivetError

if TYPE_CHECKING:  # pragma: no cover
    from .config import PipelineConfig

MAGIC = b"\x89PRIVET"
VERSION = 1
CHUNK_SIZE = 1 << 20
TAG = 16
KEY_BYTES = 32
_SALT = 32
_PREFIX = 7
HEADER = len(MAGIC) + 1 + 4 + _SALT + _PREFIX
_MIN_CHUNK, _MAX_CHUNK = 1 << 10, 64 << 20
_INFO = b"privet file key v1"


class KeyMissingError(PrivetError):
    """No key where one is needed (unset variable, absent file, failed command)."""


class AuthenticationError(PrivetError, OSError):
    """An encrypted file did not authenticate: wrong key, changed, truncated or swapped."""


def authentication_failed(path: Any, why: str = "") -> AuthenticationError:
    detail = f" ({why})" if why else ""
    return AuthenticationError(f"{path}: authentication failed{detail}: wrong key, or the file was "
                               f"changed, truncated or replaced; nothing was read from it")


def is_encrypted(data: bytes | memoryview) -> bool:
    """Whether ``data`` starts like a file of this format."""
    return bytes(data[: len(MAGIC)]) == MAGIC


class Cipher:
    """Seals and opens whole files with one 32-byte key (see the module docstring).

    Picklable (DataLoader workers started by ``spawn`` re-open encrypted shards): the key
    then travels over the local pipe to the worker, never to disk.
    """

    def __init__(self, key: bytes, *, chunk_size: int = CHUNK_SIZE) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise PrivetError(f"an encryption key is exactly {KEY_BYTES} bytes")
        if not _MIN_CHUNK <= chunk_size <= _MAX_CHUNK:
            raise PrivetError(f"chunk size {chunk_size} is outside {_MIN_CHUNK}..{_MAX_CHUNK}")
        self._key = key
        self.chunk_size = chunk_size

    def __reduce__(self) -> Any:
        return (Cipher, (self._key,), {"chunk_size": self.chunk_size})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.chunk_size = state["chunk_size"]

    def __repr__(self) -> str:  # never the key
        return f"<Cipher key_id={self.key_id}>"

    @property
    def key_id(self) -> str:
        """A short public name of the key (HMAC of a constant), e.g. for cache keys."""
        return hmac.new(self._key, b"privet key id v1", hashlib.sha256).hexdigest()[:16]

    def _file_aead(self, salt: bytes, header: bytes) -> Any:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        file_key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt,
                        info=_INFO + header[: len(MAGIC) + 5]).derive(self._key)
        return AESGCM(file_key)

    def encrypt(self, plain: bytes | bytearray | memoryview) -> bytes:
        """``plain`` sealed: header, then one sealed chunk per ``chunk_size`` bytes (at least one)."""
        view = memoryview(plain).cast("B")
        size = self.chunk_size
        salt, prefix = os.urandom(_SALT), os.urandom(_PREFIX)
        header = MAGIC + bytes([VERSION]) + struct.pack(">I", size) + salt + prefix
        aead = self._file_aead(salt, header)
        count = max(1, -(-len(view) // size))
        if count >= 1 << 32:
            raise PrivetError("a file over 4 PiB cannot be encrypted")
        out = [header]
        for i in range(count):
            last = i == count - 1
            out.append(aead.encrypt(_nonce(prefix, i, last), view[i * size:(i + 1) * size],
                                    _ad(header, i, last)))
        return b"".join(out)

    def decrypt(self, data: bytes | memoryview, *, name: Any = "file") -> bytes:
        """The plaintext of a whole sealed file, or :class:`AuthenticationError` naming ``name``.

        Every chunk is verified before anything is returned: a caller never sees part of
        a file whose end was cut off or changed.
        """
        from cryptography.exceptions import InvalidTag

        view = memoryview(data).cast("B")
        if len(view) < HEADER + TAG or not is_encrypted(view):
            raise authentication_failed(name, "not an encrypted Privet file, or truncated")
        header = bytes(view[:HEADER])
        if header[len(MAGIC)] != VERSION:
            raise authentication_failed(name, f"unknown format version {header[len(MAGIC)]}")
        (size,) = struct.unpack(">I", header[len(MAGIC) + 1: len(MAGIC) + 5])
        if not _MIN_CHUNK <= size <= _MAX_CHUNK:
            raise authentication_failed(name, "bad chunk size in the header")
        salt = header[len(MAGIC) + 5: len(MAGIC) + 5 + _SALT]
        prefix = header[-_PREFIX:]
        aead = self._file_aead(salt, header)
        body = view[HEADER:]
        sealed = size + TAG
        count = -(-len(body) // sealed)
        if len(body) - (count - 1) * sealed < TAG:
            raise authentication_failed(name, "truncated")
        out = []
        for i in range(count):
            last = i == count - 1
            try:
                out.append(aead.decrypt(_nonce(prefix, i, last), body[i * sealed:(i + 1) * sealed],
                                        _ad(header, i, last)))
            except InvalidTag:
                raise authentication_failed(name, f"chunk {i}") from None
        return b"".join(out)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, int(last))


def _ad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">QB", index, int(last))


# -- keys --------------------------------------------------------------------------------------


def decode_key(text: bytes | str, where: str, *, raw_ok: bool = False) -> bytes:
    """A key from its base64 text (or, for a binary key file, 32 raw bytes), or one error."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    stripped = raw.strip()
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == KEY_BYTES:
        return key
    if raw_ok and len(raw) == KEY_BYTES:
        return raw
    raise KeyMissingError(f"{where}: key missing: not a {KEY_BYTES}-byte key in base64 (make one "
                          f"with: python -c \"import os,base64;"
                          f"print(base64.b64encode(os.urandom(32)).decode())\")")


def new_key_text() -> str:
    """A fresh random key as base64 text (what a key file or variable holds)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def split_reference(reference: str, where: str) -> tuple[str, str]:
    """``"env:NAME"`` -> ``("env", "NAME")``; anything else is one :class:`ConfigError`."""
    from .errors import ConfigError

    provider, sep, arg = str(reference).partition(":")
    if not sep or not provider or not arg or not provider.replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"a key reference is PROVIDER:ARGUMENT (env:NAME, file:PATH, "
                          f"command:...), never the key itself; got {_redacted(reference)}",
                          path=where)
    return provider, arg


def _redacted(reference: str) -> str:
    text = str(reference)
    return repr(text if len(text) <= 12 else text[:4] + "...")


def load_key(reference: str, catalog: Any, base_dir: Path, *,
             where: str = "security.encryption.key") -> bytes:
    """The key a reference names, through the key provider registered under its prefix."""
    provider, arg = split_reference(reference, where)
    entry = catalog.get("key_provider", provider, key_path=where)
    try:
        key = entry.cls().load(arg, Path(base_dir))
    except KeyMissingError as err:  # one line naming the file and key, then the provider's why
        raise KeyMissingError(f"{where}: {err}") from None
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise KeyMissingError(f"{where}: key missing: key provider {provider!r} returned no "
                              f"{KEY_BYTES}-byte key")
    return key


def cipher_for(config: PipelineConfig, catalog: Any, base_dir: Path,
               *, where: str | None = None) -> Cipher | None:
    """The run's cipher from the pipeline's ``security`` section (built once per run), or None."""
    encryption = config.security.encryption
    if encryption is None:
        return None
    label = f"{where}: security.encryption.key" if where else "security.encryption.key"
    return Cipher(load_key(encryption.key, catalog, base_dir, where=label))


def protect_run(run_dir: Path, cipher: Cipher | None, manifest: dict[str, Any] | None = None) -> None:
    """Register ``cipher`` (or plaintext) for a run folder and its cache with the storage
    module, so that every Storage made inside them seals and opens files with it."""
    from .storage import protect

    run_dir = Path(run_dir)
    protect(run_dir, cipher)
    protect(run_dir.parent / ".cache", cipher)
    data_cache = (manifest or {}).get("data_cache")
    if isinstance(data_cache, str) and data_cache:
        protect(Path(data_cache).parent, cipher)


def open_stored_run(stored: Any, loaded: Any, host: Any) -> Cipher | None:
    """The cipher of a run folder read back (resume, export, predict, load_trained), from
    the stored config's ``security`` section; registered for the folder and its cache."""
    from .storage import Storage

    cipher = cipher_for(loaded.config, host.catalog, loaded.base_dir,
                        where=str(Path(stored.run_dir) / "config.yaml"))
    check_key(Storage(stored.run_dir, cipher=cipher), create=False)
    protect_run(stored.run_dir, cipher, stored.manifest)
    return cipher


#: A small sealed file in every encrypted run folder: a resume, export or predict with
#: the wrong key fails on it, before anything is prepared, trained or written.
KEY_CHECK = "key-check"
_KEY_CHECK_TEXT = b"privet key check v1"


def check_key(storage: Any, *, create: bool) -> None:
    """Open the folder's key check with ``storage``'s cipher (authentication failed: wrong
    key), or write it when it is missing and ``create`` (rank 0 of a run)."""
    if storage.cipher is None:
        return
    if storage.exists(KEY_CHECK):
        if storage.read_bytes(KEY_CHECK) != _KEY_CHECK_TEXT:
            raise authentication_failed(storage.path(KEY_CHECK), "unexpected content")
    elif create:
        storage.write_bytes(KEY_CHECK, _KEY_CHECK_TEXT)
