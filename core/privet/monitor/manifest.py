"""``manifest.json``: what a run was made of, for audit and reproduction."""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def file_hash(path: str, limit: int = 256 << 20) -> dict[str, Any]:
    """sha256 of a file (of its first and last 8 MiB if it is larger than ``limit``); for an
    ``s3://`` object its size and ETag, from the store, without reading it."""
    if str(path).startswith("s3:/"):
        from ..objectstore import info

        size, etag = info(str(path))
        return {"path": str(path), "size": size, "etag": etag}
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        if size <= limit:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
            partial = False
        else:
            h.update(fh.read(8 << 20))
            fh.seek(size - (8 << 20))
            h.update(fh.read())
            partial = True
    return {"path": str(p), "size": size, "sha256": h.hexdigest(), "partial": partial}


def git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_manifest(*, config_hash: str, data_files: list[str], plugins: list[dict[str, Any]],
                   pipeline_dir: Path, world_size: int) -> dict[str, Any]:
    import torch

    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {
        "config_hash": config_hash,
        "data_files": [file_hash(f) for f in data_files],
        "plugins": plugins,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "user": user,
        "world_size": world_size,
        "git_commit": git_commit(pipeline_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ended": None,
    }
