"""``privet init MODALITY``: write a starter pipeline file for an installed modality."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import get_host
from ..errors import UsageError


@click.command()
@click.argument("modality")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: pipeline.yaml).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_context
def init(ctx: click.Context, modality: str, output: str | None, force: bool) -> None:
    """Write a starter pipeline for MODALITY (text, image, timeseries ...)."""
    host = get_host(ctx)
    text = host.starter_pipeline(modality)
    if text is None:
        loaded = sorted(n for n, i in host.infos.items() if i.origin != "builtin" and i.status == "loaded")
        raise UsageError(f"no installed plugin provides a starter pipeline for {modality!r} "
                         f"(loaded plugins: {', '.join(loaded) or 'none'}); "
                         f"pip install privet-{modality}")
    path = Path(output or "pipeline.yaml")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}; run it with: privet run {path}")
