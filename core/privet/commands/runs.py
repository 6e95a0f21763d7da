"""``privet runs purge RUN --keep export``: delete what a finished run holds of its data.

Checkpoints, ``best/``, the fitted state and the cache link hold weights and data-derived
state; once the run is exported, only the bundle is needed. Purging keeps the bundle and
the plain records of the run (config, manifest, reports, TensorBoard scalars) and removes
everything else, under the run's lock, so a running run is never purged.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError

#: What a purge keeps besides the bundle: plain records of the run (docs/security.md).
KEPT = frozenset({"export", "config.yaml", "manifest.json", "report.json", ".lock", "key-check",
                  "tensorboard"})


def purge_run(run_dir: str | Path) -> list[str]:
    """Remove everything of ``run_dir`` but its export bundle and plain records; return
    the names removed. Refused for a run without a bundle or one in use."""
    from ..runs import RunLock, load_run

    stored = load_run(run_dir)
    storage = stored.storage
    if not storage.path("export/bundle.json").is_file():
        raise UsageError(f"{stored.run_dir}: no export bundle (export/bundle.json) to keep; "
                         f"run 'privet export {stored.run_dir}' first")
    lock = RunLock(stored.run_dir).acquire()
    try:
        removed = [name for name in storage.listdir() if name not in KEPT]
        for name in removed:
            storage.remove(name)  # the cache link goes, never the shared cache it points to
    finally:
        lock.release()
    return removed


@click.group()
def runs() -> None:
    """Manage run folders: purge what a finished run no longer needs."""


@runs.command("purge")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--keep", type=click.Choice(["export"]), required=True,
              help="What to keep: export (the bundle, plus config, manifest and reports).")
def purge(run_dir: str, keep: str) -> None:
    """Remove RUN_DIR's checkpoints, best/, fitted state and cache link; keep the bundle."""
    removed = purge_run(run_dir)
    click.echo(f"purged {run_dir}: removed {', '.join(removed) if removed else 'nothing'}; "
               f"kept {keep}/")
