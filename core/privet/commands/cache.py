"""``privet cache list`` and ``privet cache clear``: the prepared data caches of a runs folder.

A prepared cache holds the cleaned training records; these commands show what is kept
(fingerprint, size, source files, last use, encrypted or not) and delete it on demand.
Every read and delete goes through :mod:`privet.storage`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError

_AGE = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """``7d`` -> seconds (s, m, h, d, w); anything else is one usage error."""
    m = _AGE.match(text.strip())
    if not m:
        raise UsageError(f"--older-than {text!r}: expected a number and a unit, e.g. 12h, 7d, 2w")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def _local_runs_dir(runs_dir: str) -> Path:
    """Where the caches of ``runs_dir`` live: runs on an object store keep theirs on local
    disk, in the staging folder (never in the bucket)."""
    from ..objectstore import is_remote

    if is_remote(runs_dir):
        from ..runs import staging_root

        return staging_root()
    return Path(runs_dir)


def cache_entries(runs_dir: Path) -> list[dict[str, Any]]:
    """One entry per complete cache under ``runs_dir/.cache`` (temp folders are skipped)."""
    from ..crypto import KeyMissingError
    from ..storage import Storage

    root = Storage(Path(runs_dir) / ".cache", cipher=None)
    out = []
    for name in root.listdir():
        folder = root.sub(name)
        if name.startswith(".") or not folder.exists("meta.json"):
            continue
        entry: dict[str, Any] = {"fingerprint": name, "path": str(folder.root),
                                 "size": folder.size(), "last_used": folder.mtime("meta.json")}
        try:
            meta = folder.read_json("meta.json")
            entry.update(encrypted=False, sources=_sources(meta.get("files")))
        except KeyMissingError:
            entry.update(encrypted=True, sources=None)
        except (OSError, ValueError):
            entry.update(encrypted=False, sources=None, damaged=True)
        out.append(entry)
    return out


def _sources(files: Any) -> Any:
    if isinstance(files, list):
        return [f.get("path") for f in files if isinstance(f, dict)]
    if isinstance(files, dict):
        return f"{files.get('count')} files"
    return None


@click.group()
def cache() -> None:
    """Prepared data caches: list them, delete them."""


@cache.command("list")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="The runs folder whose .cache to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_caches(runs_dir: str, as_json: bool) -> None:
    """Fingerprint, size, source files, last use and encryption of each cache."""
    entries = cache_entries(_local_runs_dir(runs_dir))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo(f"no prepared caches in {_local_runs_dir(runs_dir) / '.cache'}")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        sources = ("encrypted (key needed to list)" if e["encrypted"]
                   else ", ".join(e["sources"]) if isinstance(e["sources"], list) else e["sources"])
        click.echo(f"{e['fingerprint']}  {e['size'] / 1e6:8.1f} MB  last used {used}  "
                   f"{'encrypted' if e['encrypted'] else 'plaintext'}  {sources}")


@cache.command("clear")
@click.argument("fingerprint", required=False)
@click.option("--older-than", "older_than", metavar="AGE", help="Only caches unused for AGE (7d, 12h).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
def clear(fingerprint: str | None, older_than: str | None, runs_dir: str) -> None:
    """Delete one cache (FINGERPRINT), those unused for --older-than, or all of them."""
    from ..storage import Storage

    entries = cache_entries(_local_runs_dir(runs_dir))
    if fingerprint is not None:
        entries = [e for e in entries if e["fingerprint"] == fingerprint]
        if not entries:
            raise UsageError(f"no prepared cache {fingerprint!r} in {Path(runs_dir) / '.cache'}; "
                             f"see 'privet cache list'")
    if older_than is not None:
        cutoff = time.time() - parse_age(older_than)
        entries = [e for e in entries if e["last_used"] < cutoff]
    root = Storage(Path(runs_dir) / ".cache", cipher=None)
    for e in entries:
        root.remove(e["fingerprint"])
        click.echo(f"removed {e['path']} ({e['size'] / 1e6:.1f} MB)")
    if not entries:
        click.echo("nothing to remove")
