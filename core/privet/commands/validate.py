"""``privet validate FILE``: check a pipeline file without touching any data."""

from __future__ import annotations

import click

from ..cli import get_host


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the file, e.g. -s train.epochs=3.")
@click.pass_context
def validate(ctx: click.Context, file: str, overrides: tuple[str, ...]) -> None:
    """Check a pipeline file: keys, types, component names and their options."""
    from ..pipeline import prepare_config

    _host, loaded = prepare_config(file, host=get_host(ctx), overrides=list(overrides))
    n = len(loaded.component_specs())
    click.echo(f"{file}: valid ({n} components)")
