"""``privet plugins``: what is installed, its status and its components."""

from __future__ import annotations

import json

import click

from ..cli import get_host


def describe(host) -> list[dict]:
    """The JSON shape of ``privet plugins --json``: one object per plugin."""
    catalog = host.catalog
    out = []
    for name, info in sorted(host.infos.items(), key=lambda kv: (kv[1].origin == "builtin", kv[0])):
        out.append({
            "name": name,
            "distribution": info.distribution,
            "version": info.version,
            "status": info.status,
            "origin": info.origin,
            "error": info.error,
            "components": catalog.by_plugin(name) if info.status == "loaded" else {},
        })
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("-v", "--verbose", is_flag=True, help="Also show each component's options.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool, verbose: bool) -> None:
    """List plugins with distribution, version, status and components."""
    host = get_host(ctx)
    rows = describe(host)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        dist = f"{row['distribution'] or '-'} {row['version'] or ''}".strip()
        status = row["status"] + (f" ({row['error']})" if row["error"] else "")
        click.echo(f"{row['name']}  [{dist}]  {status}")
        for kind, names in row["components"].items():
            click.echo(f"    {kind}: {', '.join(names)}")
            if verbose:
                for name in names:
                    _describe_component(host.catalog.get(kind, name))
    if verbose:
        host.register_commands(ctx.find_root().command)
        extra = sorted(set(ctx.find_root().command.commands) - _builtin_names())
        if extra:
            click.echo(f"plugin commands: {', '.join(extra)}")


def _builtin_names() -> set[str]:
    from ..cli import BUILTIN_COMMANDS

    return set(BUILTIN_COMMANDS)


def _describe_component(entry) -> None:
    import attrs

    click.echo(f"        {entry.name}: {entry.summary}")
    opts = getattr(entry.cls, "Options", None)
    if opts is not None and attrs.has(opts):
        for field in attrs.fields(opts):
            tname = getattr(field.type, "__name__", None) or str(field.type)
            click.echo(f"            {field.name}: {tname} ({describe_default(field)})")


def describe_default(field) -> str:
    """How an attrs field's default reads in ``privet plugins -v``, without building an
    instance: a factory may need the other options (``takes_self``) or may fail alone."""
    import attrs

    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return "default: computed from the other options"
        try:
            default = default.factory()
        except Exception:  # noqa: BLE001 - a listing must not fail on one odd default
            return f"default: computed by {getattr(default.factory, '__name__', 'a factory')}"
    shown = repr(default)
    return f"default {shown if len(shown) <= 60 else shown[:57] + '...'}"
