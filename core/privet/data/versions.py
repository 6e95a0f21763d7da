"""The code version of a component, for the prepared-cache fingerprint.

A cache made by yesterday's cleaner must not be reused after the cleaner's code changed:
its counts and its output may differ. A released distribution is identified by its
name and version; code that can change without a new version (an editable install, a
``--plugin-dir`` module, a module on ``sys.path``) is identified by a hash of its files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: The core's own built-ins are hashed by their module file only: an edit anywhere else
#: in an editable core (the CLI, the docs) says nothing about the data it prepares.
CORE_PACKAGE = "privet"


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    """Top-level package -> distribution names (one scan of the environment per process)."""
    return metadata.packages_distributions()


@functools.lru_cache(maxsize=None)
def _release(dist_name: str) -> tuple[str, bool]:
    """(version, editable) of an installed distribution."""
    dist = metadata.distribution(dist_name)
    editable = False
    text = dist.read_text("direct_url.json")
    if text:
        try:
            editable = bool(json.loads(text).get("dir_info", {}).get("editable"))
        except (ValueError, AttributeError):
            editable = False
    return dist.version, editable


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files):
        try:
            data = file.read_bytes()
        except OSError:
            continue
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def _source_files(module_name: str, whole_package: bool) -> list[Path]:
    """The ``.py`` files behind ``module_name``: its top-level package, or the module alone."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return []
    path = Path(file)
    if whole_package:
        top = sys.modules.get(module_name.split(".")[0])
        top_file = getattr(top, "__file__", None)
        if top_file and Path(top_file).name == "__init__.py":
            return [p for p in Path(top_file).parent.rglob("*.py") if "__pycache__" not in p.parts]
    if path.name == "__init__.py":
        return sorted(path.parent.glob("*.py"))
    return [path]


def code_version(cls: type) -> dict[str, Any]:
    """``{component, distribution, version, source_sha256}``: what names the code of ``cls``.

    ``source_sha256`` is there when the code can change under the same version: an
    editable install (the whole top-level package is hashed) or a module that belongs to
    no distribution, such as a ``--plugin-dir`` file (that file is hashed).
    """
    module = cls.__module__
    top = module.split(".")[0]
    out: dict[str, Any] = {"component": f"{module}.{cls.__qualname__}"}
    dists = _distributions().get(top, [])
    editable = True
    if dists:
        version, editable = _release(dists[0])
        out["distribution"], out["version"] = dists[0], version
    if editable:
        files = _source_files(module, whole_package=bool(dists) and top != CORE_PACKAGE)
        out["source_sha256"] = _hash_files(files) if files else None
    return out
