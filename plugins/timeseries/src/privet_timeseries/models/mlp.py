"""``timeseries.mlp``: a baseline MLP for tabular regression and classification.

One example per row (no windowing). Numeric fields are the inputs (after the cleaners:
impute, outliers, categorical one-hot, scale); label-encoded categories listed in
``embed`` get a learned embedding each.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Literal, Optional

import attrs
import numpy as np

from privet import DataError, DropRecord, Model, Record, StepOutput, record_tables
from privet import OptionValueError, positive

from ..categorical import category_of
from ..columns import RESERVED
from ..series import numeric_values
from ..stats import RunningStats, finite
from .base import _check_dropout, add_field_stats, count_labels


def _check_hidden(_inst: Any, _attr: Any, value: list[int]) -> None:
    if any(v < 1 for v in value):
        raise OptionValueError(f"hidden sizes must be positive, got {value}", "hidden")


class MLP(Model):
    """Multi-layer perceptron over a row's numeric fields (``task``: classification or regression).

    Rows with a missing or non-finite input are dropped at encoding with reason
    ``missing_value``; impute them with ``timeseries.impute`` to keep them.
    """

    @attrs.define(frozen=True)
    class Options:
        label: str = "label"
        task: Literal["classification", "regression"] = "classification"
        #: Input fields; ``null`` = every numeric field but the label and ``exclude``.
        features: Optional[list[str]] = None
        exclude: list[str] = attrs.field(factory=list)
        #: Integer-coded category fields (``timeseries.categorical`` with method label).
        embed: list[str] = attrs.field(factory=list)
        embed_dim: int = attrs.field(default=8, validator=positive)
        hidden: list[int] = attrs.field(factory=lambda: [64, 64], validator=_check_hidden)
        dropout: float = attrs.field(default=0.1, validator=_check_dropout)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.task = self.options.task
        self.state: dict[str, Any] = {}

    def default_lr(self) -> float | None:
        """AdamW at 3e-3, the rate the tabular example reaches 85% accuracy with in 20 epochs."""
        return 3e-3

    def fit(self, records: Iterable[Record]) -> None:
        """Learn the input fields, their scaling, embedding sizes and the labels, in one
        pass over the records as Arrow tables (:func:`privet.record_tables`)."""
        o = self.options
        stats: dict[str, RunningStats] = {}
        present: set[str] = set()
        codes: dict[str, int] = {c: 0 for c in o.embed}
        labels: Counter[str] = Counter()
        label_stats = RunningStats()
        skip = RESERVED | {o.label, *codes}
        n = 0
        for table in record_tables(records):
            n += table.num_rows
            present.update(table.column_names)
            add_field_stats(stats, table, skip)
            for key in codes:
                codes[key] = max(codes[key], _largest_int(table, key))
            if self.task == "classification":
                count_labels(labels, table, o.label)
            else:
                label_values = numeric_values(table, o.label)
                if label_values is not None:
                    label_stats.add_many(label_values)
        if n == 0:
            raise DataError(f"model {self.name}: no training records to fit on")
        if o.label not in present:
            raise DataError(f"model {self.name}: no field {o.label!r} in the records (fields: "
                            f"{', '.join(sorted(present))}); set model.options.label")
        absent = [c for c in [*(o.features or ()), *o.embed] if c not in present]
        if absent:
            raise DataError(f"model {self.name}: field(s) {', '.join(map(repr, absent))} not in the "
                            f"records (fields: {', '.join(sorted(present))})")
        features = list(o.features) if o.features is not None else \
            sorted(k for k in stats if k not in set(o.exclude))
        if not features and not o.embed:
            raise DataError(f"model {self.name}: no numeric input field; encode text columns with "
                            f"timeseries.categorical")
        if self.task == "classification" and len(labels) < 2:
            raise DataError(f"model {self.name}: classification needs at least 2 classes in "
                            f"{o.label!r}, found {len(labels)}")

        def loc_scale(col: str) -> list[float]:
            st = stats.get(col)
            if st is None or st.count == 0:
                return [0.0, 1.0]
            return [st.mean, st.std if st.std > 1e-12 else 1.0]

        self.state = {"features": features, "scaling": [loc_scale(c) for c in features],
                      "cardinalities": [codes[c] + 1 for c in o.embed]}
        if self.task == "classification":
            self.state["labels"] = sorted(labels)
        else:
            # the threshold, not ``std or 1``: numpy's std of a constant column is ~1e-17
            self.state["label_scaling"] = [label_stats.mean, label_stats.std if label_stats.std > 1e-12 else 1.0] \
                if label_stats.count else [0.0, 1.0]
        self._derive()

    def _derive(self) -> None:
        self._label_index = {lab: i for i, lab in enumerate(self.state.get("labels") or [])}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
        self._derive()

    def build(self) -> Any:
        from ..networks.mlp import MLPNet  # imported lazily: torch

        if not self.state:
            raise DataError(f"model {self.name}: build() before fit()")
        o = self.options
        scaling = np.array(self.state["scaling"], np.float32).reshape(-1, 2)
        n_out = len(self.state["labels"]) if self.task == "classification" else 1
        return MLPNet(feature_loc=scaling[:, 0], feature_scale=scaling[:, 1],
                      cardinalities=self.state["cardinalities"], embed_dim=o.embed_dim,
                      hidden=list(o.hidden), dropout=o.dropout, n_outputs=n_out,
                      label_scaling=self.state.get("label_scaling"))

    def encode(self, record: Record, *, need_label: bool = True) -> dict[str, Any]:
        x = np.empty(len(self.state["features"]), np.float32)
        for i, col in enumerate(self.state["features"]):
            v = finite(record.get(col))
            if v is None:
                raise DropRecord("missing_value", f"{col!r} is missing or not finite; impute it "
                                                  f"with timeseries.impute")
            x[i] = v
        item: dict[str, Any] = {"x": x}
        if self.options.embed:
            codes = np.zeros(len(self.options.embed), np.int64)
            for i, (col, card) in enumerate(zip(self.options.embed, self.state["cardinalities"])):
                v = record.get(col)
                codes[i] = v if isinstance(v, int) and 0 <= v < card else 0  # 0: unknown bucket
            item["codes"] = codes
        label = record.get(self.options.label)
        if not need_label:
            item["label"] = 0 if self.task == "classification" else 0.0  # a placeholder
            return item
        if self.task == "classification":
            idx = self._label_index.get(category_of(label)) if label is not None else None
            if idx is None:
                raise DropRecord("unknown_label", f"{label!r} was not in the training split")
            item["label"] = idx
        else:
            v = finite(label)
            if v is None:
                raise DropRecord("missing_label", f"{self.options.label!r}")
            item["label"] = v
        return item

    def encode_inputs(self, record: Record) -> dict[str, Any]:
        """Encode a row for inference: its label may be missing."""
        return self.encode(record, need_label=False)

    def class_names(self) -> list[str] | None:
        return list(self.state["labels"]) if self.state.get("labels") else None

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = {"x": torch.from_numpy(np.stack([it["x"] for it in items]))}
        if "codes" in items[0]:
            out["codes"] = torch.from_numpy(np.stack([it["codes"] for it in items]))
        dtype = torch.int64 if self.task == "classification" else torch.float32
        out["label"] = torch.tensor([it["label"] for it in items], dtype=dtype)
        return out

    def step(self, module: Any, batch: dict[str, Any]) -> StepOutput:
        import torch.nn.functional as F

        out = module(batch["x"], batch["codes"]) if "codes" in batch else module(batch["x"])
        n = batch["x"].shape[0]
        if self.task == "classification":
            per = F.cross_entropy(out.float(), batch["label"], reduction="none")
        else:
            _loc, scale = self.state["label_scaling"]
            err = (out.float() - batch["label"]) / scale
            per = (err * err).reshape(n, -1).sum(1)
        return StepOutput(per.sum(), n, out, batch["label"], per_example=per)

    def example_inputs(self, batch: dict[str, Any]) -> tuple[Any, ...]:
        return (batch["x"], batch["codes"]) if "codes" in batch else (batch["x"],)

    def input_names(self) -> list[str]:
        return ["x", "codes"] if self.options.embed else ["x"]

    def output_names(self) -> list[str]:
        return ["logits"] if self.task == "classification" else ["prediction"]


def _largest_int(table: Any, key: str) -> int:
    """The largest value of an int-typed column (0 if none): the record path's codes are the
    ``int`` values of ``key`` (floats and bools are no codes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if key not in table.column_names or not pa.types.is_integer(table.column(key).type):
        return 0
    largest = pc.max(table.column(key)).as_py()
    return 0 if largest is None else int(largest)
