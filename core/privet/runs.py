"""Run folders: finding, creating and loading them.

Resume, export, predict and generate all start from a run folder; this module is the one
place that knows its layout (``config.yaml``, ``manifest.json``, ``state/``, ...). Every
read and write goes through :class:`privet.storage.Storage`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import attrs

from .errors import PrivetError, TrainingError
from .storage import Storage


@attrs.define
class StoredRun:
    """A run folder read back: its pipeline config (as written) and manifest."""

    run_dir: Path
    storage: Storage
    config: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def base_dir(self) -> Path:
        """The folder the pipeline file was in: relative paths in the config start there."""
        return Path(self.manifest.get("pipeline_dir") or self.run_dir)


def load_run(run_dir: str | Path) -> StoredRun:
    """Read a run folder's config and manifest once; a folder that is no run is refused.

    A run on an object store (``s3://...``) is first fetched into a local working copy
    (:func:`fetch_remote_run`), mirrored back to its URL; ``run_dir`` is then that copy.
    """
    import yaml

    from .objectstore import is_remote

    run_dir = fetch_remote_run(run_dir) if is_remote(run_dir) else Path(run_dir)
    storage = Storage(run_dir)
    if not storage.exists("config.yaml"):
        raise PrivetError(f"{run_dir} is not a Privet run folder (no config.yaml); pass the "
                          f"folder that 'privet run' printed (in a multi-node run, runs_dir "
                          f"must be on storage that every node sees)")
    try:
        config = yaml.safe_load(storage.read_text("config.yaml"))
        manifest = storage.read_json("manifest.json") if storage.exists("manifest.json") else {}
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise PrivetError(f"{run_dir}: cannot read the run's config or manifest: {err}") from err
    if not isinstance(config, dict) or not isinstance(manifest, dict):
        raise PrivetError(f"{run_dir}: config.yaml or manifest.json is not a mapping; "
                          f"the run folder is damaged")
    return StoredRun(run_dir=run_dir, storage=storage, config=config, manifest=manifest)


def runs_root(config: Any, base_dir: Path) -> Path:
    """``runs_dir`` of a pipeline, relative to the pipeline file's folder."""
    runs = Path(config.runs_dir)
    return runs if runs.is_absolute() else base_dir / runs


def elastic_run(runs: Path) -> Path | None:
    """The run folder an earlier attempt of this torchrun job created, if any.

    torchrun restarts every worker after a failure with the same TORCHELASTIC_RUN_ID;
    the restarted workers must continue that run, not start another.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    # Restart counts can differ between agents (a membership change does not count),
    # so only the job's run id decides; "none" is torchrun's default for no --rdzv-id.
    if not run_id or run_id == "none" or not runs.is_dir():
        return None
    for child in sorted(runs.iterdir()):
        manifest = child / "manifest.json"
        if manifest.is_file():
            try:
                if json.loads(Storage(child).read_text("manifest.json")).get("elastic_run_id") == run_id:
                    return child
            except (OSError, ValueError):
                continue
    return None


def restart_dir(config: Any, base_dir: Path) -> Path | None:
    """The run folder an earlier attempt of this job made (torchrun restart, PRIVET_RUN_DIR)."""
    found = elastic_run(runs_root(config, base_dir))
    env_dir = os.environ.get("PRIVET_RUN_DIR")
    if found is None and env_dir and (Path(env_dir) / "config.yaml").exists():
        found = Path(env_dir)
    return found


def check_world_size(stored: StoredRun, world_size: int) -> None:
    """Resuming with another world size would change the data order: refuse it."""
    before = stored.manifest.get("world_size", 1)
    if before != world_size:
        raise TrainingError(f"{stored.run_dir} was trained by {before} processes; resuming with "
                            f"{world_size} would change the data order and the global batch. "
                            f"Resume it with {before} processes")


# -- names, creation and locking ---------------------------------------------------------------

#: Longest run name: a folder name, with room for the ``-N`` suffix.
MAX_NAME = 100


def check_run_name(name: str, *, key: str = "name") -> str:
    """A run name is a plain folder name: it can never point outside ``runs_dir``."""
    from .errors import ConfigError

    if not isinstance(name, str) or not name.strip():
        raise ConfigError("a run name must be a non-empty string", path=key)
    if len(name) > MAX_NAME:
        raise ConfigError(f"a run name is at most {MAX_NAME} characters (got {len(name)})", path=key)
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise ConfigError(f"run name {name!r} must be a plain name: no '/', '\\', or leading '.'",
                          path=key)
    return name


class RunLock:
    """An exclusive advisory lock on ``RUN/.lock``, held for the life of the process.

    The kernel releases it when the process dies, even by SIGKILL, so a killed run can be
    resumed at once while a running one cannot be resumed (or written) by a second process.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; documented
            return self
        fd = Storage(self.run_dir).open_fd(".lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            from .errors import UsageError

            raise UsageError(f"{self.run_dir} is in use by another privet process (a run or "
                             f"resume still running); wait for it to end or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _failed_without_checkpoint(folder: Path) -> bool:
    """A run that failed before its first checkpoint: nothing in it can be resumed."""
    storage = Storage(folder)
    try:
        report = storage.read_json("report.json") if storage.exists("report.json") else {}
    except (OSError, ValueError):
        return False
    steps = [n for n in storage.listdir("checkpoints") if n.startswith("step-")]
    return isinstance(report, dict) and report.get("status") == "failed" and not steps


def _set_aside(runs: Storage, name: str) -> bool:
    """Rename a failed run out of the way (``NAME.failed-K``), keeping its report."""
    lock = RunLock(runs.path(name))
    try:
        lock.acquire()
    except PrivetError:
        return False  # someone is using it (a resume): leave it alone
    try:
        k = 1
        while runs.exists(f"{name}.failed-{k}"):
            k += 1
        runs.rename(name, f"{name}.failed-{k}")
        return True
    except OSError:
        return False  # another process set it aside first
    finally:
        lock.release()


def create_run_folder(runs: Path, stem: str) -> Path:
    """Atomically claim ``runs/stem`` (or ``stem-2``, ``stem-3`` ...): two runs started at
    the same moment never share a folder. A run of that name that failed before its first
    checkpoint is set aside as ``stem.failed-K`` so the name goes to the new run."""
    check_run_name(stem)
    storage = Storage(runs)
    storage.makedirs()
    k = 1
    while True:
        name = stem if k == 1 else f"{stem}-{k}"
        if k == 1 and storage.exists(name) and _failed_without_checkpoint(runs / name):
            _set_aside(storage, name)
        if storage.claim(name):
            return runs / name
        k += 1


# -- run folders on an object store ---------------------------------------------------------------

_STEP = re.compile(r"^checkpoints/(step-\d+)/state\.json$")


def staging_root() -> Path:
    """Where runs on an object store keep their local working copy: ``PRIVET_STAGING_DIR``,
    else a private folder under the system temp folder (0700)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(os.environ.get("PRIVET_STAGING_DIR") or Path(tempfile.gettempdir()) / f"privet-staging-{uid}")
    Storage(root).makedirs("runs")
    return root


def _new_staging(name: str) -> Path:
    """A fresh local folder ``.../runs/UNIQUE/name`` for one process's working copy."""
    holder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=staging_root() / "runs"))
    Storage(holder).makedirs(name)
    return holder / name


def create_remote_run(runs_url: str, stem: str) -> Path:
    """Claim ``runs_url/stem`` (or ``stem-2`` ...) on the store and return its local working
    copy, mirrored to it. An object store has no atomic mkdir: a name is taken once any
    object exists under it, and ``config.yaml`` is written at once (docs/object-storage.md)."""
    from . import objectstore
    from .storage import mirror

    check_run_name(stem)
    objectstore.require_bucket(runs_url)
    taken = set(objectstore.children(runs_url))
    k = 1
    while (stem if k == 1 else f"{stem}-{k}") in taken:
        k += 1
    name = stem if k == 1 else f"{stem}-{k}"
    local = _new_staging(name)
    mirror(local, objectstore.join(runs_url, name))
    return local


def remote_checkpoints(url: str) -> list[str]:
    """Names of the complete checkpoints (``step-N`` whose ``state.json`` marker exists)
    of a run on an object store, oldest first."""
    from . import objectstore

    base = objectstore.url_of(url)
    found = {m.group(1) for obj, _ in objectstore.list_files(objectstore.join(base, "checkpoints"))
             if (m := _STEP.match(obj[len(base) + 1:]))}
    return sorted(found)


def fetch_remote_run(url: str | Path) -> Path:
    """Copy a run on an object store into a fresh local working copy, mirrored back to it.

    Only what resuming, exporting and predicting need comes down: the config, manifest,
    reports, fitted state, TensorBoard events, ``best/`` and the newest complete
    checkpoint; a step without its marker (a killed upload) is never fetched.
    """
    from . import objectstore
    from .storage import mirror

    url = objectstore.url_of(url)
    if not objectstore.is_file(objectstore.join(url, "config.yaml")):
        raise PrivetError(f"{url} is not a Privet run folder (no config.yaml); pass the URL "
                          f"that 'privet run' printed")
    steps = remote_checkpoints(url)
    newest = f"checkpoints/{steps[-1]}/" if steps else None

    def keep(rel: str) -> bool:
        if rel.startswith("export/"):
            return False
        return not rel.startswith("checkpoints/") or (newest is not None and rel.startswith(newest))

    local = _new_staging(url.rsplit("/", 1)[-1])
    objectstore.download_tree(url, local, keep=keep)
    mirror(local, url)
    return local


def shown(run_dir: str | Path) -> str:
    """How to name a run folder to the user: its ``s3://`` URL when it is mirrored."""
    from .storage import remote_url

    return remote_url(run_dir) or str(run_dir)
