"""attrs validators for component options; their messages become one-line config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


class OptionValueError(ValueError):
    """A value the user wrote is invalid; the message is shown as it is.

    ``field`` names the option it concerns, so that the config error can name the full
    key path (``data.source.options.paths``) and its line in the pipeline file.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def existing_path(_instance: Any, attribute: Any, value: Any) -> None:
    """The option names a file or folder that exists (checked without reading it). An
    ``s3://`` URL is checked when the source lists it, with the store's own answer."""
    if value is not None and str(value).startswith("s3:/"):
        return
    if value is not None and not Path(value).exists():
        raise OptionValueError(f"file not found: {value}; check the path (relative paths are "
                               f"resolved against the pipeline file's folder)", attribute.name)


def existing_paths(_instance: Any, attribute: Any, value: Any) -> None:
    for item in value or ():
        existing_path(_instance, attribute, item)


def positive(_instance: Any, attribute: Any, value: Any) -> None:
    """The option is above zero (``None`` passes: it means "not set")."""
    if value is not None and not value > 0:  # "not >": NaN is refused too
        raise OptionValueError(f"{attribute.name} must be positive, got {value}", attribute.name)


def non_negative(_instance: Any, attribute: Any, value: Any) -> None:
    """The option is zero or more (``None`` passes); zero usually means "off"."""
    if value is not None and not value >= 0:
        raise OptionValueError(f"{attribute.name} must be 0 or more, got {value}", attribute.name)


def at_least(minimum: int) -> Callable[[Any, Any, Any], None]:
    """A validator: the option is ``None`` or at least ``minimum`` (a count, a size)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and not value >= minimum:
            raise OptionValueError(f"{attribute.name} must be at least {minimum}, got {value}",
                                   attribute.name)

    return check


def probability(_instance: Any, attribute: Any, value: Any) -> None:
    if not 0.0 <= value <= 1.0:
        raise OptionValueError(f"{attribute.name} must be between 0 and 1, got {value}",
                               attribute.name)
