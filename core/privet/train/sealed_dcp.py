"""Sharded (FSDP) checkpoints sealed at rest: a filesystem for torch.distributed.checkpoint.

DCP writes its shard files and ``.metadata`` itself, through a small filesystem object
(``create_stream``, ``rename``, ``exists``...). Swapping that object for one backed by the
storage module makes every file it writes go through :class:`privet.storage.Storage`: a
file is assembled in memory, sealed (AES-256-GCM, chunked) and written atomically, owner
only; reading decrypts and authenticates a whole file before DCP slices it. A shard holds
one rank's part of the weights and optimizer, so the memory cost is what an encrypted
unsharded checkpoint already pays, divided by the number of ranks.
"""

from __future__ import annotations

import io
import os
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..storage import Storage


class _Buffer(io.BytesIO):
    """An in-memory file that outlives DCP's ``close()``: it is sealed after the stream ends."""

    def close(self) -> None:
        pass

    def release(self) -> None:
        super().close()


def sealed_filesystem(storage: Storage) -> Any:
    """A DCP ``FileSystem`` whose files live in ``storage`` (sealed when it encrypts)."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    root = storage.root

    def rel(path: str | os.PathLike[str]) -> str:
        p = Path(path)
        return str(p.relative_to(root)) if p.is_absolute() else str(p)

    class SealedFileSystem(FileSystem):
        @contextmanager
        def create_stream(self, path: str | os.PathLike[str],
                          mode: str) -> Generator[io.IOBase, None, None]:
            if "r" in mode:
                yield io.BytesIO(storage.read_bytes(rel(path)))
                return
            buffer = _Buffer()
            yield buffer
            # only a stream DCP finished normally is written: an exception leaves no file
            storage.write_bytes(rel(path), buffer.getvalue())
            buffer.release()

        def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
            storage.rename(rel(path), rel(new_path))

        def mkdir(self, path: str | os.PathLike[str]) -> None:
            storage.makedirs(rel(path))

        def exists(self, path: str | os.PathLike[str]) -> bool:
            return storage.exists(rel(path))

        def rm_file(self, path: str | os.PathLike[str]) -> None:
            storage.remove(rel(path))

        def ls(self, path: str | os.PathLike[str]) -> list[str]:
            return [str(Path(path) / name) for name in storage.listdir(rel(path))]

    return SealedFileSystem()


def sealed_writer(path: Path) -> Any:
    """A ``FileSystemWriter`` for ``path`` whose files are written through the storage module.

    ``sync_files`` is off because :meth:`Storage.write_bytes` fsyncs each file and its
    folder itself.
    """
    from torch.distributed.checkpoint import FileSystemWriter

    writer = FileSystemWriter(str(path), sync_files=False)
    writer.fs = sealed_filesystem(Storage(path))
    writer.path = Path(path)
    return writer


def use_sealed_files(reader: Any, path: Path) -> Any:
    """Point a DCP ``FileSystemReader`` at the storage module (decrypting) and return it."""
    reader.fs = sealed_filesystem(Storage(path))
    reader.path = Path(path)
    return reader
