"""Reading raw records for ``privet predict``: kept as a name for :mod:`privet.io`.

The reader lives in :mod:`privet.io` (one JSONL/CSV reader for sources and predict, with
the same ``file:line`` errors); this module re-exports the names predict used before.
"""

from __future__ import annotations

from ..io import (CSV_SUFFIXES, JSONL_SUFFIXES, Located, input_files, read_csv, read_jsonl,
                  read_records)

__all__ = ["CSV_SUFFIXES", "JSONL_SUFFIXES", "Located", "input_files", "read_csv", "read_jsonl",
           "read_records"]
