"""Loading a pipeline for use: its plugins (``plugins.paths`` too), then validation.

Shared by ``privet validate``, the engine and everything that reloads a finished run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .config import LoadedConfig, load_config, read_raw, validate_components


def _load_host(loaded_paths: list[str], base_dir: Path, host: Any | None) -> Any:
    """The given host (or a freshly loaded one) plus the pipeline's plugin folders."""
    if host is None:
        from .plugins import load_plugins

        host = load_plugins(on_warning=lambda m: print(f"privet: warning: {m}", file=sys.stderr))
    for folder in loaded_paths:
        p = Path(folder)
        host.load_path(p if p.is_absolute() else base_dir / p)
    return host


def prepare_config(config: dict[str, Any] | str | Path, *, host: Any | None = None,
                   base_dir: str | Path | None = None, overrides: list[str] = ()) -> tuple[Any, LoadedConfig]:
    """Load plugins (including ``plugins.paths``) and validate the pipeline against them."""
    if isinstance(config, (str, Path)):
        raw, _ = read_raw(config)
        base = Path(base_dir) if base_dir else Path(config).resolve().parent
    else:
        raw = config
        base = Path(base_dir or ".").resolve()
    paths = ((raw.get("plugins") or {}).get("paths") or []) if isinstance(raw, dict) else []
    host = _load_host(list(paths), base, host)
    if isinstance(config, (str, Path)):
        loaded = load_config(config, overrides=list(overrides), base_dir=base_dir)
    else:
        loaded = load_config(data=config, overrides=list(overrides), base_dir=base)
    host.require(loaded.config.plugins.required)
    validate_components(loaded, host.catalog)
    return host, loaded
