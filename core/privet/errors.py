"""The exception hierarchy of Privet.

Every error a user can cause derives from :class:`PrivetError`. The launcher prints
such errors as one line and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class PrivetError(Exception):
    """Root of all errors raised on purpose by Privet and its plugins."""

    exit_code = 2


class UsageError(PrivetError):
    """The user asked for something that cannot work (bad flag, bad argument)."""


class ConfigError(PrivetError):
    """A pipeline file is invalid. The message names the key path and, if known, the line."""

    def __init__(self, message: str, *, path: str | None = None, file: str | None = None,
                 line: int | None = None) -> None:
        self.message = message
        self.key_path = path
        self.file = file
        self.line = line
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        key = f"{path}: " if path else ""
        super().__init__(f"{where}{key}{message}")


class UnknownComponentError(ConfigError):
    """A pipeline names a component that no loaded plugin registered."""


class PluginError(PrivetError):
    """A plugin failed to load, or two plugins conflict."""


class DuplicateComponentError(PluginError):
    """Two plugins registered the same component name for the same kind."""


class DataError(PrivetError):
    """Input data is unusable: missing file, too many bad records, or ``on_error: fail``."""


class TrainingError(PrivetError):
    """Training cannot continue (NaN loss, diverged, resumed from an incompatible run)."""


class CheckpointError(PrivetError):
    """A checkpoint cannot be written or read safely."""


class ExportError(PrivetError):
    """An export or a bundle is invalid, or its verification failed."""


class AuditError(PrivetError):
    """An audit log that does not verify, or cannot be appended to. The message names the
    file and the first bad line (``LOG.2:17: ...``) and what is wrong with it."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(f"{where}{message}")


class DropRecord(Exception):
    """Raised by a source or cleaner to drop the current record with a reason.

    Not a :class:`PrivetError`: it never escapes the data engine, which counts it.
    ``bad=False`` marks a record filtered on purpose (a duplicate, too short): it is
    counted but does not count towards ``data.max_bad_fraction`` or ``on_error: fail``.
    """

    def __init__(self, reason: str, detail: str = "", *, bad: bool = True) -> None:
        self.reason = reason
        self.detail = detail
        self.bad = bad
        super().__init__(f"{reason}: {detail}" if detail else reason)
