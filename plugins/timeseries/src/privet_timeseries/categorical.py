"""``timeseries.categorical``: one-hot or label encoding with an unknown bucket.

Categories are learned on the training split; anything else (a new shop, a typo, a value
too rare to keep) goes to the unknown bucket, so validation and inference never fail on
a category training did not see.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Optional

import attrs

from privet import Cleaner, DataError, Record
from privet import OptionValueError, positive

from .columns import fit_pass

UNKNOWN = "<unknown>"
MISSING = "<missing>"


def _non_empty(_inst: Any, _attr: Any, value: list[str]) -> None:
    if not value:
        raise OptionValueError("columns must name at least one categorical column", "columns")


def category_of(value: Any) -> str:
    """The category text of a cell: numbers as written (2.0 -> "2"), None -> <missing>."""
    if value is None:
        return MISSING
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Categorical(Cleaner):
    """Encode text columns: ``onehot`` (``col=value`` 0/1 floats) or ``label`` (int codes).

    Label codes start at 1; 0 is the unknown bucket. One-hot adds ``col=<unknown>``.
    """

    needs_fit = True

    @attrs.define(frozen=True)
    class Options:
        columns: list[str] = attrs.field(validator=_non_empty)
        method: Literal["onehot", "label"] = "onehot"
        #: Categories seen fewer times in training go to the unknown bucket.
        min_count: int = attrs.field(default=1, validator=positive)
        #: Keep only the most frequent categories.
        max_categories: Optional[int] = attrs.field(default=None, validator=positive)
        #: Keep the text column next to its encoding (label codes go to ``<col>_code``).
        keep_original: bool = False

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.categories: dict[str, list[str]] = {}
        self.fitted = False
        self.counts: Counter[str] = Counter()

    def fit(self, records: Any) -> None:
        o = self.options
        seen: dict[str, Counter[str]] = {c: Counter() for c in o.columns}

        def observe(_record: Record, column: str, value: Any) -> None:
            seen[column][category_of(value)] += 1

        fit_pass(records, list(o.columns), (), observe, who=f"cleaner {self.name}")
        self.categories = {}
        for column, counter in seen.items():
            ranked = sorted((c for c, n in counter.items() if n >= o.min_count),
                            key=lambda c: (-counter[c], c))
            if o.max_categories is not None:
                ranked = ranked[: o.max_categories]
            self.categories[column] = sorted(ranked)
        self.fitted = True
        self._index = {c: {v: i for i, v in enumerate(cats)} for c, cats in self.categories.items()}

    def clean(self, record: Record) -> Record:
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        o = self.options
        for column, cats in self.categories.items():
            value = category_of(record.get(column))
            idx = self._index[column].get(value)
            if idx is None:
                self.counts[f"unknown.{column}"] += 1
            if o.method == "label":
                key = f"{column}_code" if o.keep_original else column
                record[key] = 0 if idx is None else idx + 1
                continue
            for i, cat in enumerate(cats):
                record[f"{column}={cat}"] = 1.0 if i == idx else 0.0
            record[f"{column}={UNKNOWN}"] = 1.0 if idx is None else 0.0
            if not o.keep_original:
                record.pop(column, None)
        return record

    def report(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"categories": self.categories}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.categories = {c: list(v) for c, v in state.get("categories", {}).items()}
        self._index = {c: {v: i for i, v in enumerate(cats)} for c, cats in self.categories.items()}
        self.fitted = True
