"""Private, temporary local copies of ``s3://`` bundles and run folders.

The commands that *read* a trained model (``privet predict``, ``generate``, ``chat``,
``serve``) hand paths to readers that need real files (ONNX Runtime, safetensors,
tokenizers). An ``s3://`` target is therefore downloaded first into an owner-only folder
under the staging root (``PRIVET_STAGING_DIR``), which is removed when the command ends.
Nothing is mirrored back: these commands never write to the model they read, and a
bundle's signature and encryption are checked on the copy exactly as on a local folder.

What comes down is what the target is, decided by its marker objects:

- a bundle (``bundle.json``): every object under it;
- an artifact folder inside a bundle (``RUN/export/merged``): its whole bundle;
- a run folder (``config.yaml``): the config, manifest, fitted state, ``best/`` and the
  newest *complete* checkpoint (its ``state.json`` marker exists), never the older steps,
  TensorBoard events or the export.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs

from . import objectstore
from .errors import PrivetError


@attrs.frozen
class Staged:
    """A local copy of an ``s3://`` target, and what it is."""

    path: Path  # what the command reads instead of the URL
    kind: str  # "bundle" | "artifact" | "run"
    run_name: str  # the run's folder name as the URL shows it (a served model's default name)


def private_folder(stack: contextlib.ExitStack, prefix: str) -> Path:
    """A fresh owner-only folder under the staging root, removed when ``stack`` closes."""
    from .runs import staging_root

    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}.", dir=staging_root()))
    stack.callback(shutil.rmtree, folder, True)
    return folder


def _names(url: str) -> list[str]:
    """The URL's key parts (``s3://b/runs/x/export`` -> ``["runs", "x", "export"]``)."""
    bucket, key = objectstore.split(url)
    return [p for p in key.split("/") if p] or [bucket]


def stage(url: str | Path, into: Path, *, prefer_export: bool = False) -> Staged:
    """Download the bundle, artifact folder or run folder at ``url`` into folder ``into``.

    ``prefer_export``: a run folder that has an export stands for its bundle (``privet
    predict RUN``). The copy keeps the URL's last folder names, so names derived from the
    layout (``runs/NAME/export``) are the same as for a local folder.
    """
    url = objectstore.url_of(url)
    names = _names(url)
    parent = url.rsplit("/", 1)[0] if len(names) > 1 else None
    if prefer_export and objectstore.is_file(objectstore.join(url, "export", "bundle.json")):
        local = _bundle(objectstore.join(url, "export"), into / names[-1] / "export")
        return Staged(local, "bundle", names[-1])
    if objectstore.is_file(objectstore.join(url, "bundle.json")):
        tail = into.joinpath(*names[-2:])
        return Staged(_bundle(url, tail), "bundle", names[-2] if len(names) > 1 else names[-1])
    if objectstore.is_file(objectstore.join(url, "config.yaml")):
        return Staged(_run(url, into / names[-1]), "run", names[-1])
    if parent and objectstore.is_file(objectstore.join(parent, "bundle.json")):
        local = _bundle(parent, into.joinpath(*names[-3:-1]))
        return Staged(local / names[-1], "artifact", names[-3] if len(names) > 2 else names[-2])
    objectstore.require_bucket(url)  # a missing bucket says so rather than "no bundle"
    raise PrivetError(f"{url}: neither an export bundle (no bundle.json) nor a run folder "
                      f"(no config.yaml); pass what 'privet run' or 'privet export' printed")


def _bundle(url: str, local: Path) -> Path:
    """Every object of the bundle at ``url`` (files 0600, folders 0700)."""
    if not objectstore.download_tree(url, local):
        raise PrivetError(f"{url}: the bundle is empty")
    return local


def _run(url: str, local: Path) -> Path:
    """What loading a trained run reads: never a checkpoint whose marker is missing."""
    from .runs import remote_checkpoints

    steps = remote_checkpoints(url)
    newest = f"checkpoints/{steps[-1]}/" if steps else None

    def keep(rel: str) -> bool:
        if rel.startswith(("export/", "tensorboard/")):
            return False
        return not rel.startswith("checkpoints/") or (newest is not None and rel.startswith(newest))

    objectstore.download_tree(url, local, keep=keep)
    return local


def staged_path(stack: contextlib.ExitStack, target: Any, prefix: str, **options: Any) -> str:
    """``target`` itself when local, else the path of its private copy (removed with ``stack``)."""
    if not objectstore.is_remote(target):
        return str(target)
    return str(stage(target, private_folder(stack, prefix), **options).path)
