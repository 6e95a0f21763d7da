"""``privet validate FILE``: check a pipeline file without touching any data."""

from __future__ import annotations

import click

from ..cli import get_host


def load_pipeline(ctx: click.Context, file: str, overrides: tuple[str, ...]):
    """Load and validate a pipeline: its plugins, component names and options."""
    from ..config import load_config, read_raw

    host = get_host(ctx)
    raw, _ = read_raw(file)
    plugins = raw.get("plugins") or {}
    if isinstance(plugins, dict):
        from pathlib import Path

        base = Path(file).resolve().parent
        for folder in plugins.get("paths") or []:
            host.load_path(base / folder)
    loaded = load_config(file, overrides=list(overrides))
    host.require(loaded.config.plugins.required)
    from ..config import validate_components

    validate_components(loaded, host.catalog)
    return host, loaded


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the file, e.g. -s train.epochs=3.")
@click.pass_context
def validate(ctx: click.Context, file: str, overrides: tuple[str, ...]) -> None:
    """Check a pipeline file: keys, types, component names and their options."""
    _host, loaded = load_pipeline(ctx, file, overrides)
    n = len(loaded.component_specs())
    click.echo(f"{file}: valid ({n} components)")
