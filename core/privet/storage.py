"""Every read and write of a run folder goes through here.

One small module, so that encryption at rest and object stores live in one place. Writes
are atomic: temp file, fsync, rename, fsync of the folder. A failed write (full disk,
killed process) leaves the previous version of the file intact. Folders are created 0700
and files 0600 whatever the umask (chmod explicitly): they hold data derived from private
data.

With a :class:`privet.crypto.Cipher`, every file but :data:`PLAIN_NAMES` is sealed on
write and opened (fully authenticated) on read. A Storage made without an explicit cipher
takes the one :func:`protect` registered for a folder above its root, so code that makes
its own ``Storage(path)`` inside an encrypted run folder or cache cannot write plaintext.

Object stores: a run folder on ``s3://`` has a local working copy (a staging folder) that
:func:`mirror` ties to its URL. Every Storage under it then copies each completed write
to the store: a file after its local rename, an atomic folder object by object with its
marker (``state.json``, ``meta.json``, ``bundle.json``) last, so a folder on the store is
complete exactly when its marker exists; a removal deletes the marker first. Files that
libraries write themselves (TensorBoard) go up at :meth:`Storage.flush`. What is sealed
locally is what is uploaded: with encryption on, objects are ciphertext.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, PrivetError

#: Files that stay plaintext in an encrypted folder: the config (key reference only, never
#: the key), the manifest and the reports (counts, metrics, times). See docs/security.md.
PLAIN_NAMES = frozenset({"config.yaml", "manifest.json", "report.json", ".lock"})
_FROM_REGISTRY: Any = object()
_PROTECTED: dict[Path, Any] = {}
#: local staging root -> its ``s3://`` URL (:func:`mirror`)
_MIRRORS: dict[Path, str] = {}
#: local file -> (size, mtime_ns) last uploaded, so :meth:`Storage.flush` sends only changes
_SENT: dict[Path, tuple[int, int]] = {}
#: Never uploaded: the advisory lock of this machine's process.
LOCAL_ONLY = frozenset({".lock"})


def protect(root: str | os.PathLike[str], cipher: Any) -> None:
    """Every Storage under ``root`` made without a cipher uses ``cipher`` (None: plaintext)."""
    _PROTECTED[Path(root).resolve()] = cipher


def mirror(root: str | os.PathLike[str], url: str | None) -> None:
    """Every Storage under local folder ``root`` copies its writes to ``url`` (None: stop)."""
    key = Path(root).resolve()
    if url is None:
        _MIRRORS.pop(key, None)
    else:
        from .objectstore import url_of

        _MIRRORS[key] = url_of(url)


def remote_url(path: str | os.PathLike[str]) -> str | None:
    """The ``s3://`` URL a local path is mirrored to, or None (a plain local path)."""
    if not _MIRRORS:
        return None
    resolved = Path(path).resolve()
    for candidate in (resolved, *resolved.parents):
        if candidate in _MIRRORS:
            rel = resolved.relative_to(candidate).as_posix()
            base = _MIRRORS[candidate]
            return base if rel in ("", ".") else f"{base}/{rel}"
    return None


def _staged(rel: str) -> bool:
    """Whether ``rel`` is a temp name or a local-only file, which never goes to the store."""
    parts = Path(rel).parts
    return any(p.startswith(".tmp-") or p.endswith(".tmp") for p in parts) or (
        bool(parts) and parts[-1] in LOCAL_ONLY)


def _registered(root: Path) -> Any:
    if not _PROTECTED:
        return None
    resolved = root.resolve()
    for candidate in (resolved, *resolved.parents):
        if candidate in _PROTECTED:
            return _PROTECTED[candidate]
    return None


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """umask 077 for the block: files that libraries create themselves (TensorBoard event
    files, exporters' artifacts) are owner-only too; the previous umask is restored."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mkdirs(p: Path) -> None:
    """Create ``p`` and its missing parents as 0700 (chmod: the umask cannot widen or narrow it)."""
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


class StorageError(PrivetError, OSError):
    """A run folder or cache cannot be read or written (read-only, full disk, damaged).

    Also an ``OSError``, so code that handles I/O errors keeps handling it.
    """


def _fail(action: str, path: Path, err: OSError) -> StorageError:
    return StorageError(f"cannot {action} {path}: {err.strerror or err}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Storage:
    """A folder with atomic, owner-only writes, encrypted when it has a cipher.

    Paths given to methods are relative to ``root``.
    """

    def __init__(self, root: str | os.PathLike[str], cipher: Any = _FROM_REGISTRY) -> None:
        self.root = Path(root)
        self.cipher = _registered(self.root) if cipher is _FROM_REGISTRY else cipher
        #: the ``s3://`` URL of ``root`` when it is a mirrored staging folder, else None
        self.remote = remote_url(self.root)

    def _remote(self, rel: str | os.PathLike[str]) -> str | None:
        """The URL ``rel`` is copied to, or None (no mirror, or a temp / local-only name)."""
        if self.remote is None:
            return None
        url = self.remote if str(rel) in ("", ".") else f"{self.remote}/{Path(rel).as_posix()}"
        return None if _staged(url[len("s3://"):]) else url  # temp folders stay local

    def _send(self, rel: str | os.PathLike[str], data: bytes | memoryview | None = None) -> None:
        """Upload local file ``rel`` (its bytes as written, sealed when encrypted)."""
        url = self._remote(rel)
        if url is None:
            return
        from . import objectstore

        p = self.path(rel)
        if data is None:
            data = p.read_bytes()
        objectstore.put_bytes(url, data)
        st = p.stat()
        _SENT[p.resolve()] = (st.st_size, st.st_mtime_ns)

    def send(self, rel: str, *, as_rel: str | None = None, sent_by_another: bool = False) -> None:
        """Upload local file ``rel`` now, for a caller that orders the objects itself
        (marker last): sharded checkpoints, whose files come from several processes.

        ``as_rel``: the object's name in the run (a file still in a temp folder goes up
        under its final name); ``sent_by_another``: another process uploaded these bytes,
        only remember them as sent (so :meth:`flush` does not upload them again).
        """
        url = self._remote(as_rel or rel)
        if url is None:
            return
        p = self.path(rel)
        if not sent_by_another:
            from . import objectstore

            objectstore.put_bytes(url, p.read_bytes())
        st = p.stat()
        _SENT[p.resolve()] = (st.st_size, st.st_mtime_ns)

    def flush(self, rel: str = "") -> list[str]:
        """Upload the files under ``rel`` changed since they were last sent (what libraries
        wrote themselves: TensorBoard). Returns their names; does nothing without a mirror."""
        if self._remote(rel) is None:
            return []
        folder = self.path(rel)
        sent = []
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            name = p.relative_to(self.root).as_posix()
            if p.is_symlink() or not p.is_file() or _staged(name) or _under_link(p, self.root):
                continue
            st = p.stat()
            if _SENT.get(p.resolve()) != (st.st_size, st.st_mtime_ns):
                self._send(name)
                sent.append(name)
        return sent

    def _send_tree(self, rel: str) -> None:
        """Replace prefix ``rel`` on the store with local folder ``rel``, marker last."""
        url = self._remote(rel)
        if url is None:
            return
        from . import objectstore

        before = [u for u, _size in objectstore.list_files(url)]
        for old in before:  # an older copy's marker goes first: it must not vouch for new data
            if old.rsplit("/", 1)[-1] in objectstore.MARKERS:
                objectstore.delete(old)
        folder = self.path(rel)
        files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                 and not _under_link(p, folder) and not _staged(p.name)]
        files.sort(key=lambda p: (p.name in objectstore.MARKERS, str(p)))  # the marker last
        sent = set()
        for p in files:  # each PUT replaces one object whole: no moment without best/ weights
            name = p.relative_to(self.root).as_posix()
            self._send(name)
            sent.add(f"{self.remote}/{name}")
        for old in before:  # then what the new copy no longer has
            if old not in sent and old.rsplit("/", 1)[-1] not in objectstore.MARKERS:
                objectstore.delete(old)

    def sub(self, rel: str | os.PathLike[str]) -> "Storage":
        """The Storage of folder ``rel`` (or of an absolute folder), with the same cipher."""
        return Storage(self.root / rel, cipher=self.cipher)

    def encrypts(self, rel: str | os.PathLike[str]) -> bool:
        """Whether ``rel`` is sealed here (a cipher, and not one of :data:`PLAIN_NAMES`)."""
        return self.cipher is not None and Path(rel).name not in PLAIN_NAMES

    def path(self, rel: str | os.PathLike[str] = "") -> Path:
        """The local path of ``rel`` (for libraries that need a real file, like mmap)."""
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def makedirs(self, rel: str = "") -> Path:
        """Create ``rel`` (owner-only: run folders hold data derived from private data)."""
        p = self.path(rel)
        try:
            _mkdirs(p)
        except OSError as err:
            raise _fail("create", p, err) from err
        return p

    def size(self, rel: str = "") -> int:
        """Bytes on disk of file or folder ``rel`` (links not followed)."""
        p = self.path(rel)
        if not p.is_dir():
            return p.stat().st_size if p.exists() else 0
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())

    def mtime(self, rel: str) -> float:
        return self.path(rel).stat().st_mtime

    def touch(self, rel: str) -> None:
        """Mark ``rel`` as used now (its mtime): what ``privet cache list`` shows as last use."""
        try:
            os.utime(self.path(rel))
        except OSError:
            pass  # a read-only cache is still usable

    def listdir(self, rel: str = "") -> list[str]:
        p = self.path(rel)
        return sorted(os.listdir(p)) if p.is_dir() else []

    # -- reads ----------------------------------------------------------------------------

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes, decrypted and authenticated when this folder is encrypted.

        An encrypted file read without a key is refused ("key missing"), and a plaintext
        file where a sealed one belongs is refused ("authentication failed"): a swapped-in
        plaintext file is never taken for the real one.
        """
        from .crypto import KeyMissingError, is_encrypted

        p = self.path(rel)
        data = p.read_bytes()
        if self.encrypts(rel):
            return self.cipher.decrypt(data, name=p)
        if is_encrypted(data):
            raise KeyMissingError(f"{p}: key missing: the file is encrypted; set "
                                  f"security.encryption.key (or --key) to the run's key")
        return data

    def local_file(self, rel: str) -> Path:
        """The path of plaintext file ``rel``, for a library that reads files itself (mmap).

        Only for folders that do not encrypt it; an encrypted file found there is refused
        with "key missing" rather than handed to a parser as garbage.
        """
        from .crypto import MAGIC, KeyMissingError

        p = self.path(rel)
        if self.encrypts(rel):
            raise StorageError(f"{p}: an encrypted file has no plaintext path; read its bytes")
        try:
            with open(p, "rb") as fh:
                head = fh.read(len(MAGIC))
        except OSError:
            return p  # the library reports the missing or unreadable file itself
        if head == MAGIC:
            raise KeyMissingError(f"{p}: key missing: the file is encrypted; set "
                                  f"security.encryption.key (or --key) to the run's key")
        return p

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def read_json_object(self, rel: str, *, what: str = "file") -> dict[str, Any]:
        """A JSON object, or one clear error naming the file when it is damaged."""
        try:
            value = self.read_json(rel)
        except (OSError, ValueError) as err:
            raise StorageError(f"{self.path(rel)}: cannot read the {what} ({err})") from err
        if not isinstance(value, dict):
            raise StorageError(f"{self.path(rel)}: the {what} is not a JSON object; the file is damaged")
        return value

    # -- writes ---------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Atomically replace ``rel`` with ``data``."""
        target = self.path(rel)
        if self.encrypts(rel):
            data = self.cipher.encrypt(data)
        try:
            _mkdirs(target.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as err:
            raise _fail("write", target, err) from err
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(err, OSError):
                raise _fail("write", target, err) from err
            raise
        _fsync_dir(target.parent)
        self._send(rel, data)
        return target

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    @contextlib.contextmanager
    def atomic_dir(self, rel: str) -> Iterator[Path]:
        """Yield a temp folder; on success it is fsynced and renamed to ``rel``.

        A crash or error before the rename leaves only a ``.tmp-*`` folder, which
        :meth:`clean_partial` removes and readers ignore.
        """
        target = self.path(rel)
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
        try:
            _mkdirs(target.parent)
            if tmp.exists():
                shutil.rmtree(tmp)
            _mkdirs(tmp)
        except OSError as err:
            raise CheckpointError(f"cannot write {target}: {err.strerror or err}; "
                                  f"the previous files are intact") from err
        try:
            yield tmp
            for child in sorted(tmp.rglob("*"), reverse=True):  # subfolders too (model folders)
                if child.is_dir() and not child.is_symlink():
                    os.chmod(child, 0o700)
                    _fsync_dir(child)
                elif child.is_file() and not child.is_symlink():
                    with open(child, "rb") as fh:  # files a library wrote: owner-only too
                        os.fchmod(fh.fileno(), 0o600)
                        os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except (OSError, RuntimeError) as err:
            # torch.save reports a full disk as RuntimeError (inline_container.cc), safetensors
            # as its own error: anything failing inside the write leaves the old files intact
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(err, OSError) and not _is_write_failure(err):
                raise
            raise CheckpointError(f"cannot write {target}: {_reason(err)}; "
                                  f"the previous files are intact") from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._send_tree(rel)  # object by object, the marker last: complete once it lands

    def seal_tree(self, rel: str = "") -> list[str]:
        """Seal, in place, the plaintext files a library wrote under folder ``rel`` (an
        exporter's artifacts, in a temp folder not yet renamed into place). Returns their
        names; does nothing without a cipher."""
        from .crypto import MAGIC

        if self.cipher is None:
            return []
        folder = self.path(rel)
        sealed = []
        for p in sorted(folder.rglob("*")):
            if p.is_symlink() or not p.is_file() or p.name in PLAIN_NAMES:
                continue
            with open(p, "rb") as fh:
                if fh.read(len(MAGIC)) == MAGIC:
                    continue
            name = str(p.relative_to(self.root))
            self.write_bytes(name, p.read_bytes())
            sealed.append(name)
        return sealed

    def claim(self, rel: str) -> bool:
        """Create folder ``rel`` (0700) if nobody has: ``False`` when it already exists.

        ``mkdir`` is atomic, so two processes claiming one name never both win.
        """
        p = self.path(rel)
        try:
            p.mkdir(mode=0o700)
            os.chmod(p, 0o700)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            raise _fail("create", p, err) from err

    def open_fd(self, rel: str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
        """A raw descriptor (0600) for what needs one, such as an advisory lock file."""
        p = self.path(rel)
        try:
            fd = os.open(p, flags, 0o600)
        except OSError as err:
            raise _fail("open", p, err) from err
        os.fchmod(fd, 0o600)
        return fd

    def symlink(self, rel: str, target: str | os.PathLike[str]) -> None:
        """Point ``rel`` at ``target`` (a folder), replacing a link to somewhere else."""
        link = self.path(rel)
        try:
            if link.is_symlink():
                if Path(os.readlink(link)) == Path(target):
                    return
                link.unlink()
            elif link.exists():
                return  # a real folder of that name: leave it
            link.symlink_to(target, target_is_directory=True)
        except OSError as err:
            raise _fail("link", link, err) from err

    def clean_partial(self, rel: str = "") -> None:
        """Remove ``.tmp-*`` folders and files left by a killed writer."""
        for name in self.listdir(rel):
            if name.startswith(".tmp-") or name.endswith(".tmp"):
                p = self.path(rel) / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def rename(self, rel: str, new_rel: str, *, send: bool = True, sync: bool = True) -> None:
        """Atomically move ``rel`` to ``new_rel`` (same folder tree), then fsync the folder.

        A file moved into place is made owner-only (a library may have written it).
        ``send=False``: the caller uploads the objects itself (sharded checkpoints, whose
        files come from several processes). ``sync=False``: the caller fsyncs the folder
        later, once for many files (:meth:`sync_folders`, before a folder's marker).
        """
        target = self.path(new_rel)
        try:
            if self.path(rel).is_file():
                os.chmod(self.path(rel), 0o600)
            os.replace(self.path(rel), target)
        except OSError as err:
            raise _fail("rename", self.path(rel), err) from err
        if sync:
            _fsync_dir(target.parent)
        if send and self._remote(new_rel) is not None:  # an object store has no rename: copy, delete
            if target.is_dir():
                self._send_tree(new_rel)
            else:
                self._send(new_rel)
            self._unsend(rel)

    def sync_folders(self, rel: str = "") -> None:
        """fsync every folder under ``rel``: the entries of files renamed with
        ``sync=False`` reach the disk before a marker that says the folder is complete."""
        for folder, _dirs, _files in os.walk(self.path(rel)):
            _fsync_dir(Path(folder))

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if p.is_symlink():  # a link (the run's ``cache``): the link goes, not its target
            p.unlink()
            return
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        self._unsend(rel)

    def remote_children(self, rel: str = "") -> list[str]:
        """Names under ``rel`` on the object store ([] without a mirror): what exists there
        but not in the local working copy (older checkpoints of a resumed run)."""
        url = self._remote(rel)
        if url is None:
            return []
        from . import objectstore

        return objectstore.children(url)

    def _unsend(self, rel: str) -> None:
        """Delete ``rel`` (an object or a prefix) from the store, markers first."""
        url = self._remote(rel)
        if url is None:
            return
        from . import objectstore

        objectstore.delete_prefix(url)
        if objectstore.is_file(url):
            objectstore.delete(url)


def _under_link(p: Path, root: Path) -> bool:
    """Whether ``p`` is reached through a symlinked folder under ``root`` (the run's cache)."""
    q = p.parent
    while q != root and root in q.parents:
        if q.is_symlink():
            return True
        q = q.parent
    return False


def _is_write_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return any(w in text for w in ("write", "no space", "file", "disk", "quota", "errno"))


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return str(err.strerror or err)
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
