"""The tamper-evident audit log of ``privet serve``: ``AuditLog`` writes it, ``verify_log``
checks it (``privet audit verify``). See docs/audit.md for the format and its guarantees."""

from __future__ import annotations

from .entry import DEFAULT_KEY_REF, load_verify_key, open_inputs
from .verify import AuditSummary, verify_log
from .writer import FSYNC_POLICIES, AuditLog

__all__ = ["DEFAULT_KEY_REF", "FSYNC_POLICIES", "AuditLog", "AuditSummary", "load_verify_key",
           "open_inputs", "verify_log"]
