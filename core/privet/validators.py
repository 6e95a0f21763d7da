"""attrs validators for component options; their messages become one-line config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def existing_path(_instance: Any, attribute: Any, value: Any) -> None:
    """The option names a file or folder that exists (checked without reading it)."""
    if value is not None and not Path(value).exists():
        raise ValueError(f"file not found: {value}; check the path (relative paths are "
                         f"resolved against the pipeline file's folder)")


def existing_paths(_instance: Any, attribute: Any, value: Any) -> None:
    for item in value or ():
        existing_path(_instance, attribute, item)


def positive(_instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def probability(_instance: Any, attribute: Any, value: Any) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value}")
