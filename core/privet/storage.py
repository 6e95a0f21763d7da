"""Every read and write of a run folder goes through here.

One small module so that encryption at rest and object stores can be added in one place
later. Writes are atomic: temp file, fsync, rename, fsync of the folder. A failed write
(full disk, killed process) leaves the previous version of the file intact.
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
    """A folder with atomic writes. Paths given to methods are relative to ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, rel: str | os.PathLike[str] = "") -> Path:
        """The local path of ``rel`` (for libraries that need a real file, like mmap)."""
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def makedirs(self, rel: str = "") -> Path:
        """Create ``rel`` (owner-only: run folders hold data derived from private data)."""
        p = self.path(rel)
        try:
            p.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise _fail("create", p, err) from err
        return p

    def listdir(self, rel: str = "") -> list[str]:
        p = self.path(rel)
        return sorted(os.listdir(p)) if p.is_dir() else []

    # -- reads ----------------------------------------------------------------------------

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def read_text(self, rel: str) -> str:
        return self.path(rel).read_text(encoding="utf-8")

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
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as err:
            raise _fail("write", target, err) from err
        try:
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
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(mode=0o700)
        except OSError as err:
            raise CheckpointError(f"cannot write {target}: {err.strerror or err}; "
                                  f"the previous files are intact") from err
        try:
            yield tmp
            for child in tmp.iterdir():
                with open(child, "rb") as fh:
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

    def claim(self, rel: str) -> bool:
        """Create folder ``rel`` (0700) if nobody has: ``False`` when it already exists.

        ``mkdir`` is atomic, so two processes claiming one name never both win.
        """
        p = self.path(rel)
        try:
            p.mkdir(mode=0o700)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            raise _fail("create", p, err) from err

    def open_fd(self, rel: str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
        """A raw descriptor (0600) for what needs one, such as an advisory lock file."""
        p = self.path(rel)
        try:
            return os.open(p, flags, 0o600)
        except OSError as err:
            raise _fail("open", p, err) from err

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

    def rename(self, rel: str, new_rel: str) -> None:
        """Atomically move ``rel`` to ``new_rel`` (same folder tree), then fsync the folder."""
        target = self.path(new_rel)
        try:
            os.replace(self.path(rel), target)
        except OSError as err:
            raise _fail("rename", self.path(rel), err) from err
        _fsync_dir(target.parent)

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _is_write_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return any(w in text for w in ("write", "no space", "file", "disk", "quota", "errno"))


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return str(err.strerror or err)
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
