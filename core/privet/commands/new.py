"""``privet new plugin NAME``: write a complete, installable plugin package."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import click

from ..errors import UsageError

_NAME = re.compile(r"^[a-z][a-z0-9_-]*[a-z0-9]$")


def render_plugin(name: str, dest: Path) -> list[Path]:
    """Copy the plugin template to ``dest``, filling in the names. Returns the files written."""
    if not _NAME.match(name):
        raise UsageError(f"plugin name {name!r}: use lowercase letters, digits, '-' or '_' "
                         f"(e.g. acme-ocr)")
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} already exists and is not empty; choose another --dir")
    package = name.replace("-", "_")
    values = {"name": name, "dist": name, "package": package}
    root = resources.files("privet.templates") / "plugin"
    written: list[Path] = []

    def copy(node, rel: Path) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name == "__pycache__":
                continue
            target_name = child.name.replace("__package__", package)
            if child.is_dir():
                copy(child, rel / target_name)
                continue
            if not target_name.endswith(".tmpl"):
                continue
            text = child.read_text(encoding="utf-8")
            for key, value in values.items():
                text = text.replace("{{" + key + "}}", value)
            out = dest / rel / target_name[: -len(".tmpl")]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            written.append(out)

    copy(root, Path())
    return written


@click.group()
def new() -> None:
    """Create new things from templates."""


@new.command("plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where to write it (default: ./NAME).")
def plugin(name: str, directory: str | None) -> None:
    """Write a plugin package NAME: pyproject with entry point, a component, a test, a README."""
    dest = Path(directory or name)
    files = render_plugin(name, dest)
    click.echo(f"wrote plugin {name!r} to {dest} ({len(files)} files)")
    click.echo(f"next: pip install -e {dest} && privet plugins")
