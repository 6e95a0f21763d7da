"""Base classes for the six component kinds.

A component is a class with a docstring, an attrs ``Options`` class that the pipeline
file is validated against, and the methods of its kind. Plugins register component
classes through the ``register_*`` hooks; the engine instantiates them with their
validated options. Nothing here imports torch at module level: the launcher imports
this module for ``privet plugins`` and must stay fast.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, NamedTuple

import attrs

from .errors import DropRecord, ExportError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

Record = dict[str, Any]
"""One record: a plain dict of JSON-like values (str, int, float, bytes, lists)."""

KINDS = ("source", "cleaner", "augmenter", "model", "scheduler", "exporter")


@attrs.define(frozen=True)
class NoOptions:
    """Options of a component that takes none."""


class Component(abc.ABC):
    """Common base: a name (set by the catalog), an ``Options`` class and the options."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: Dotted name under which the component was registered (set by the catalog).
    name: ClassVar[str] = ""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state learned from data; saved with checkpoints and exports."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, export and predict)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.options!r}>"


@attrs.define(frozen=True)
class Shard:
    """A unit of source reading: a file, or a byte range of a big file."""

    path: str
    start: int = 0
    end: int | None = None


@attrs.define(frozen=True)
class BadRecord:
    """Yielded by a source in place of a record it cannot read.

    ``reason`` is a short stable key used for counting (``malformed_json``);
    ``location`` names the file and line (``data.jsonl:12``).
    """

    reason: str
    location: str = ""
    detail: str = ""


class Source(Component):
    """Lists shards and yields records from one shard.

    Sharding across ranks and DataLoader workers is the engine's job: a source only
    reads what it is given. Yield :class:`BadRecord` for input that cannot be parsed.
    """

    kind = "source"

    @abc.abstractmethod
    def shards(self) -> list[Shard]:
        ...

    @abc.abstractmethod
    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        ...

    def files(self) -> list[str]:
        """Files whose content defines the data (used for the cache fingerprint)."""
        return sorted({s.path for s in self.shards()})


class Cleaner(Component):
    """Record -> record, or ``None`` / :class:`~privet.errors.DropRecord` to drop it.

    Cleaners that learn statistics set ``needs_fit = True``; the engine then calls
    :meth:`fit` with the training split only, after the cleaners before this one.
    """

    kind = "cleaner"
    needs_fit: ClassVar[bool] = False

    def fit(self, records: Iterable[Record]) -> None:
        """Learn statistics from the (already cleaned) training records."""

    @abc.abstractmethod
    def clean(self, record: Record) -> Record | None:
        ...

    def report(self) -> dict[str, int]:
        """Counters worth showing in the run report (e.g. PII replacements by type)."""
        return {}


class Augmenter(Component):
    """Record -> record with an explicit, per-sample seeded generator. Training split only."""

    kind = "augmenter"

    @abc.abstractmethod
    def augment(self, record: Record, rng: np.random.Generator) -> Record:
        ...


class StepOutput(NamedTuple):
    """What :meth:`Model.step` returns for one batch.

    ``loss_sum`` is the *sum* of per-item losses and ``count`` the number of items it
    covers (samples, or tokens for language models). The engine divides by the total
    count over an accumulation window, so accumulated micro-batches of different sizes
    give exactly the gradient of one big batch.
    """

    loss_sum: torch.Tensor
    count: torch.Tensor | int
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None


class Model(Component):
    """Builds the ``nn.Module`` and says how records become tensors and losses.

    Lifecycle: :meth:`fit` on the cleaned training records (vocabularies, label maps) ->
    :meth:`examples` turns each split's records into training examples (identity by
    default; packing or windowing otherwise) -> :meth:`build` -> :meth:`encode` per
    example in DataLoader workers -> :meth:`collate` -> :meth:`step` per batch.
    """

    kind = "model"
    #: ``classification``, ``regression``, ``lm`` or ``forecast``: selects the metrics.
    task: ClassVar[str] = "classification"

    def fit(self, records: Iterable[Record]) -> None:
        """Learn what the model needs from the training split. Re-iterable input."""

    def examples(self, records: Iterable[Record], split: str) -> Iterator[Record]:
        """Turn cleaned records of one split into training examples (stored in the cache)."""
        yield from records

    @abc.abstractmethod
    def build(self) -> torch.nn.Module:
        ...

    @abc.abstractmethod
    def encode(self, record: Record) -> Any:
        """Turn one example into tensors. Raise DropRecord to skip it."""
        ...

    def collate(self, items: list[Any]) -> Any:
        """Batch encoded items (default: ``torch.utils.data.default_collate``)."""
        from torch.utils.data import default_collate  # imported lazily

        return default_collate(items)

    @abc.abstractmethod
    def step(self, module: torch.nn.Module, batch: Any) -> StepOutput:
        ...

    def example_inputs(self, batch: Any) -> tuple[Any, ...]:
        """Positional inputs of ``module`` for one batch (used by exporters)."""
        raise ExportError(f"model {self.name!r} does not define example_inputs(); it cannot be exported")

    def input_names(self) -> list[str]:
        return ["input"]

    def output_names(self) -> list[str]:
        return ["output"]

    def batch_size_of(self, batch: Any) -> int:
        """Number of samples in a batch (for throughput); default: first tensor's dim 0."""
        import torch

        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0])
        if isinstance(batch, dict):
            batch = list(batch.values())
        if isinstance(batch, (list, tuple)):
            for item in batch:
                if isinstance(item, torch.Tensor):
                    return int(item.shape[0])
        return 0


class Scheduler(Component):
    """Builds a learning-rate scheduler and says when it steps.

    ``interval`` is ``step`` (every optimizer step), ``epoch`` or ``metric`` (after
    validation, given the monitored metric, like ReduceLROnPlateau).
    """

    kind = "scheduler"
    interval: ClassVar[str] = "step"
    #: For ``interval = "metric"``: which validation metric drives it.
    monitor: str = "val/loss"

    @abc.abstractmethod
    def build(self, optimizer: Any, total_steps: int, steps_per_epoch: int) -> Any:
        ...


class Exporter(Component):
    """Writes an inference artifact from a trained model and loads it back for checks.

    ``export`` writes into ``out_dir`` and returns the artifact path; ``load`` returns a
    callable mapping named numpy inputs to a list of numpy outputs, which the core uses
    to verify the artifact against the eager model and which ``privet predict`` runs.
    """

    kind = "exporter"
    suffix: ClassVar[str] = ""

    @abc.abstractmethod
    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str]) -> Any:
        ...

    @abc.abstractmethod
    def load(self, path: Any) -> Any:
        ...


BASES: dict[str, type[Component]] = {
    "source": Source,
    "cleaner": Cleaner,
    "augmenter": Augmenter,
    "model": Model,
    "scheduler": Scheduler,
    "exporter": Exporter,
}

__all__ = [
    "Augmenter", "BadRecord", "BASES", "Cleaner", "Component", "DropRecord", "Exporter",
    "KINDS", "Model", "NoOptions", "Record", "Scheduler", "Shard", "Source", "StepOutput",
]
