"""Run folders: finding, creating and loading them.

Resume, export, predict and generate all start from a run folder; this module is the one
place that knows its layout (``config.yaml``, ``manifest.json``, ``state/``, ...). Every
read and write goes through :class:`privet.storage.Storage`.
"""

from __future__ import annotations

import json
import os
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
    """Read a run folder's config and manifest once; a folder that is no run is refused."""
    import yaml

    run_dir = Path(run_dir)
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
