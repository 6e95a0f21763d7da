"""Base classes for the component kinds.

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

from .errors import DropRecord, ExportError, PluginError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

    from .data.columns import Columns
    from .train.metrics import MetricAccumulator, Task

Record = dict[str, Any]
"""One record: a plain dict of JSON-like values (str, int, float, bytes, lists)."""

KINDS = ("source", "cleaner", "augmenter", "model", "optimizer", "scheduler", "exporter",
         "key_provider", "privacy")


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

    def read_table(self, shard: Shard) -> Any:
        """Optional columnar fast path: the shard's records as one pyarrow Table, or
        ``None`` (the default) for the record path (:meth:`read`).

        The table must hold exactly the records :meth:`read` would yield, in order: one
        column per key in the order the records have their keys, a missing value null,
        numbers as float64 or int64 as the dicts hold them. Return ``None`` for a shard
        that has anything :meth:`read` would report (a bad row, a value that needs the
        slow rules): the engine then reads that shard record by record, so drops keep
        their reasons and line numbers. Keep shards small enough to hold in memory
        (byte ranges of a few MB).
        """
        return None

    def files(self) -> list[str]:
        """Files whose content defines the data (used for the cache fingerprint)."""
        return sorted({s.path for s in self.shards()})


class Cleaner(Component):
    """Record -> record, or ``None`` / :class:`~privet.errors.DropRecord` to drop it.

    Cleaners that learn statistics set ``needs_fit = True``; the engine then calls
    :meth:`fit` with the training split only, after the cleaners before this one.
    ``applies_at_inference = False`` marks cleaners that only make sense on a training
    corpus (deduplication, label filters): ``privet predict`` skips them.
    """

    kind = "cleaner"
    needs_fit: ClassVar[bool] = False
    applies_at_inference: ClassVar[bool] = True
    #: Whether a record's result depends on that record alone (and the fitted state), so
    #: preparation may clean records in parallel worker processes. Set it to ``False`` when
    #: records are compared with each other (a dedupe's seen-set): that cleaner and those
    #: after it then run in one process, in source order. A cleaner that overrides
    #: :meth:`start_pass` and does not set this is taken as ``False``.
    per_record: ClassVar[bool] = True

    def fit(self, records: Iterable[Record]) -> None:
        """Learn statistics from the (already cleaned) training records.

        ``records`` may be iterated more than once; :func:`privet.record_tables` gives
        the same records as pyarrow Tables (numpy statistics instead of a dict per row).
        """

    def fit_table(self, table: Any) -> Any:
        """Optional map step of a parallel :meth:`fit`: what one pyarrow Table of training
        records contributes (counts, sums, a vocabulary, running statistics), as a
        picklable value.

        A cleaner that overrides this and :meth:`fit_merge` is fitted without its
        training records ever reaching the preparing process: worker processes call
        this on their shards' tables (after the cleaners before this one) and the
        preparing process merges the parts. It runs before the cleaner is fitted, so it
        may use the options only. Which tables a part covers is fixed by the data (one
        per shard, or per run of records), never by the worker count, so the fitted
        state is the same for any number of workers.
        """
        return None

    def fit_merge(self, parts: Iterable[Any]) -> None:
        """Reduce step of a parallel :meth:`fit`: fit from the :meth:`fit_table` parts of
        the whole training split, given in source order (a stream: merge as they come)."""
        raise PluginError(f"{type(self).__name__} overrides fit_table but not fit_merge; define "
                          f"both to fit by parts, or neither")

    def start_pass(self) -> None:
        """Called before each streaming pass over the data that uses this cleaner.

        The engine streams the source once per fitting cleaner (so raw records never
        touch the disk); a cleaner that remembers records across calls (a dedupe
        seen-set) forgets them here, or a later pass would drop everything.
        """

    @abc.abstractmethod
    def clean(self, record: Record) -> Record | None:
        ...

    def clean_batch(self, records: list[Record]) -> list[Record | None | DropRecord]:
        """Clean consecutive records at once: one result per record, in order.

        A result is the cleaned record, ``None`` (filtered) or the :class:`DropRecord`
        that :meth:`clean` would have raised. The engine calls this with batches of
        records in source order; the default calls :meth:`clean` per record. Override it
        where work over a list pays (one regex or numpy pass instead of one Python call
        per record); results, counters and state must equal those of :meth:`clean`.
        """
        out: list[Record | None | DropRecord] = []
        for record in records:
            try:
                out.append(self.clean(record))
            except DropRecord as drop:
                out.append(drop)
        return out

    def clean_table(self, table: Any) -> Any:
        """Optional columnar fast path: clean a pyarrow Table of records at once.

        Return the cleaned table (the same rows, in order, with the values and columns
        :meth:`clean` would give each record, and the same counters in :meth:`report`),
        or ``None`` (the default) to decline: the engine then cleans these rows with
        :meth:`clean_batch`. Decline, leaving counters alone, whenever a row would be
        dropped or filtered, or needs rules the columns cannot express: the record path
        names each drop. Preparation takes this path for a shard its source read as a
        table (:meth:`Source.read_table`) while every cleaner accepts it, and may hand it
        part of a shard's rows (a fitting pass cleans the training rows alone): a row's
        result must not depend on the other rows of the table.
        """
        return None

    def digest_batch(self, records: list[Record]) -> list[Any] | None:
        """Optional, for a cleaner with ``per_record = False``: the part of its work that
        depends on each record alone (a hash, a MinHash sketch), one picklable value per
        record, or ``None`` (the default: nothing to compute ahead).

        When this cleaner is the first that compares records, preparation calls this in
        the worker processes, on the records as the cleaners before it left them, and
        then calls ``clean_batch(records, digests=...)`` in source order in the preparing
        process, where only the cross-record part (a seen-set look-up) is left. A cleaner
        that overrides it must accept ``digests`` (a list, one per record, or ``None``:
        compute them itself) in :meth:`clean_batch`, with the same results either way.
        """
        return None

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

    ``per_example`` (optional) is each example's own share of ``loss_sum``, shape
    ``[batch]``, in the same graph (``per_example.sum() == loss_sum``: an example's
    tokens or horizons summed as ``loss_sum`` counts them; masked items count 0). Methods that treat each example
    on its own need it: Opacus' ghost clipping backpropagates the per-example losses
    twice (``privacy.grad_sample_mode: ghost``). Models that leave it ``None`` work
    everywhere else.
    """

    loss_sum: torch.Tensor
    count: torch.Tensor | int
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    per_example: torch.Tensor | None = None


class Model(Component):
    """Builds the ``nn.Module`` and says how records become tensors and losses.

    Lifecycle: :meth:`fit` on the cleaned training records (vocabularies, label maps) ->
    :meth:`examples` turns each split's records into training examples (identity by
    default; packing or windowing otherwise) -> :meth:`build` -> :meth:`encode` per
    example in DataLoader workers -> :meth:`collate` -> :meth:`step` per batch. A model
    may also define :meth:`encode_columns` to encode a whole batch from Arrow columns.
    """

    kind = "model"
    #: What the model predicts, which selects its metrics and its default
    #: :meth:`postprocess`: a built-in task's name (``classification``, ``regression``,
    #: ``forecast``, ``lm``) or a :class:`privet.Task` subclass of the plugin's own.
    task: ClassVar[str | type[Task]] = "classification"
    #: True when ``privet predict`` must build examples from all input records first,
    #: with ``examples(records, "predict")`` (series windows); False: one record, one
    #: prediction (the ``examples`` of a language model only packs training text).
    examples_at_inference: ClassVar[bool] = False
    #: True when :meth:`examples` turns each record into at most one example from that
    #: record alone (tokenizing, say; no packing, no windows). Preparation then runs it
    #: after :meth:`fit` in the worker processes, over fixed runs of cached records, and
    #: writes the examples in order as they come back; the cache is the same for any
    #: number of workers.
    per_record_examples: ClassVar[bool] = False

    def fit(self, records: Iterable[Record]) -> None:
        """Learn what the model needs from the training split. Re-iterable input;
        :func:`privet.record_tables` gives it as pyarrow Tables read from the cache."""

    def fit_table(self, table: Any) -> Any:
        """Optional map step of a parallel :meth:`fit`: what one pyarrow Table of training
        records contributes, as a picklable value (see :meth:`Cleaner.fit_table`).

        Preparation then fits the model by map and merge after the writing pass: worker
        processes call this on the cached training files, one part per file, on a copy
        of the unfitted model, and the preparing process calls :meth:`fit_merge`.
        """
        return None

    def fit_merge(self, parts: Iterable[Any]) -> None:
        """Reduce step of a parallel :meth:`fit`: fit from the :meth:`fit_table` parts of the
        whole training split, in source order (a stream: merge as they come)."""
        raise PluginError(f"{type(self).__name__} overrides fit_table but not fit_merge; define "
                          f"both to fit by parts, or neither")

    def examples(self, records: Iterable[Record], split: str) -> Iterator[Record]:
        """Turn cleaned records of one split into training examples (stored in the cache).
        :func:`privet.record_tables` gives ``records`` as pyarrow Tables."""
        yield from records

    def example_tables(self, records: Iterable[Record], split: str) -> Iterator[Any]:
        """Optional: the examples of :meth:`examples` as pyarrow Tables (runs of examples,
        in order), which preparation writes to the cache without a dict per example.

        Override it alongside :meth:`examples` when examples are many and small (series
        windows); the rows must equal what :meth:`examples` yields. Not used for
        ``split="predict"`` nor with ``per_record_examples``. Preparation calls it only
        on a model that overrides it, so this default is never reached from the engine.
        """
        raise NotImplementedError(f"{type(self).__name__} makes its examples with examples()")

    def record_order(self, table: Any) -> Any:
        """Optional: the order in which preparation stores a table of cleaned records, as
        an int array permuting its rows (``None``: keep theirs). Only for a model that
        makes its own examples, whose records are their input alone: each cached record
        file then holds its rows in this order and says so (:func:`privet.in_record_order`),
        so that a group of :meth:`example_groups` can be a run of rows found by bisection
        instead of a filter over every row of every file. Called on the unfitted model,
        in the workers too; it must depend on the table alone."""
        return None

    def example_groups(self, records: Iterable[Record], split: str) -> list[Any] | None:
        """Optional: cut a split's examples into groups that can be made apart (ranges of
        series, say), as picklable keys in the order their examples are written; ``None``
        (the default): one pass over the split here, with :meth:`example_tables`.

        Preparation then makes each group in a worker process with
        :meth:`group_example_tables` and writes the groups' tables in this order, so the
        groups must not depend on the number of workers, and the examples of all groups
        together must equal those of :meth:`example_tables`. Called on the fitted model.
        """
        return None

    def group_example_tables(self, records: Iterable[Record], split: str,
                             group: Any) -> Iterator[Any]:
        """The examples of one group of :meth:`example_groups`, as pyarrow Tables, from the
        split's whole ``records`` (the group picks its own). Runs in a worker process on a
        copy of the fitted model; the value the generator returns (``return report``) is
        its picklable report, handed to :meth:`merge_group_reports`."""
        raise PluginError(f"{type(self).__name__} defines example_groups without "
                          f"group_example_tables")

    def merge_group_reports(self, split: str, reports: list[Any]) -> None:
        """After the last group of a split, here: take in the groups' reports, in order
        (counters for :meth:`report`), and raise what only the whole split shows."""

    def report(self) -> dict[str, Any]:
        """Counters worth showing in report.json under ``model`` (e.g. windows built)."""
        return {}

    def default_lr(self) -> float | None:
        """The learning rate used when the pipeline sets no ``train.optimizer.lr``.

        A model knows what trains it well and fast (a bag-of-words model wants 1e-2, a
        transformer 1e-3 or less). Default: ``None`` (the core then uses 1e-3).
        """
        return None

    def trainable_state_dict(self, module: Any) -> dict[str, Any] | None:
        """The tensors a checkpoint and ``best/`` hold for ``module``.

        Default ``None``: all of the module's weights. A model that trains a small part of
        a large frozen one (a LoRA adapter on a pretrained LLM) returns only that part, so
        checkpoints stay small; it then implements :meth:`load_trainable_state_dict`.
        """
        return None

    def load_trainable_state_dict(self, module: Any, tensors: dict[str, Any]) -> None:
        """Put what :meth:`trainable_state_dict` returned back into a freshly built module."""
        raise NotImplementedError(f"{type(self).__name__} returns a trainable_state_dict but cannot "
                                  f"load one; implement load_trainable_state_dict")

    def task_definition(self) -> Task:
        """The :class:`privet.Task` that :attr:`task` names (metrics, post-processing)."""
        from .train.metrics import get_task  # imported lazily: keeps the launcher light

        return get_task(self.task)

    def metric_names(self) -> list[str]:
        """Metrics each evaluation reports, without the split prefix (``loss``, ``accuracy``).

        ``train.early_stopping.monitor`` must name one of them as ``val/NAME``; the pipeline
        is refused at validation otherwise. Default: the task's metric names.
        """
        return self.task_definition().metric_names()

    def metrics(self, prefix: str) -> MetricAccumulator:
        """A fresh accumulator for one evaluation (``prefix``: ``train`` or ``val``).

        Default: the task's metrics. Override :attr:`task` with a :class:`privet.Task`
        subclass to add metrics; override this only to change how they are accumulated.
        """
        from .train.metrics import MetricAccumulator

        return MetricAccumulator(self.task_definition(), prefix)

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

    def encode_columns(self, batch: Columns) -> Any:
        """Optional fast path: the collated batch of many examples at once, from their
        columns in the prepared cache.

        Per-example :meth:`encode` turns every cached row into a Python dict first; on a
        small model that is a large share of the step. Override this to build the batch
        from :class:`privet.Columns` instead (``batch.numpy("x", np.float32)`` gives a
        feature-vector field as a rows x features array, gathered straight from the
        memory-mapped files), and the engine calls it in place of
        ``collate([encode(r) for r in rows])`` whenever no augmenter is configured. It
        must return what that expression returns. Raise :class:`~privet.DropRecord` and
        the engine encodes that batch example by example, so drops are counted per
        record as usual.

        This default is that expression itself; the engine takes the columnar path only
        for models that override it.
        """
        return self.collate([self.encode(record) for record in batch.to_pylist()])

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

    # -- export and prediction (``privet export`` / ``privet predict``) --------------------------
    #
    # An export bundle holds the artifacts (ONNX, .pt2 ...) plus plain preprocessing files.
    # ``privet predict BUNDLE INPUT`` rebuilds this component from the bundle (its options and
    # fitted state, never a pickle), then per input file: read_inputs -> the run's cleaners ->
    # encode_inputs -> predict_batch (collate, example_inputs, run the artifact, postprocess).
    # Every method below has a working default; override what your modality needs.

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axes of each input and output (by name) whose size may vary in the exported model.

        Default: axis 0 of every input and output is ``batch``. Axes with the same name
        must have the same size (a text model returns ``{"tokens": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"}}``). Exporters make these axes dynamic; axes not
        named here are fixed to the size of the example inputs.
        """
        return {name: {0: "batch"} for name in [*self.input_names(), *self.output_names()]}

    def class_names(self) -> list[str] | None:
        """Names of the classes, by output index, for classification models.

        Used by the default :meth:`postprocess` (``"label": "cat"`` instead of ``2``) and
        written to ``labels.json`` by the default :meth:`bundle_files`. Default: ``None``
        (labels are the class indices).
        """
        return None

    def bundle_files(self, folder: Any) -> dict[str, str]:
        """Write what inference needs from preprocessing, as plain files, into ``folder``.

        Return ``{role: file name}`` for each file written directly in ``folder`` (a
        :class:`pathlib.Path`), e.g. ``{"tokenizer": "tokenizer.json", "scaler":
        "scaler.json", "image": "preprocessing.json"}``. Use JSON or text formats
        (``tokenizer.json``), never pickles: the bundle is read by other languages too. The
        files are listed with their checksums in ``bundle.json``; ``privet predict`` refuses
        a bundle that misses one. Your fitted :meth:`state_dict` travels separately, in
        ``model_state.json``, and is what :meth:`load_state_dict` gets back at predict time.
        Default: ``labels.json`` (a JSON list) when :meth:`class_names` returns names.
        """
        import json
        from pathlib import Path

        names = self.class_names()
        if names is None:
            return {}
        (Path(folder) / "labels.json").write_text(json.dumps(list(names), ensure_ascii=False),
                                                  encoding="utf-8")
        return {"labels": "labels.json"}

    def read_inputs(self, path: Any) -> Iterator[tuple[str, Record | BadRecord]]:
        """Raw records for ``privet predict``, each with its location (``in.jsonl:3``).

        ``path`` is what the user passed (a :class:`pathlib.Path`: a file or a folder).
        Yield ``(location, record)`` or ``(location, BadRecord(...))`` for input that
        cannot be read; the latter becomes an error entry in the output. Default: lines of
        ``.jsonl`` / ``.jsonl.gz`` files and rows of ``.csv`` files (header row gives the
        keys, numbers are parsed), or every such file in a folder. Image or time series
        plugins override this to read image files or whole series.
        """
        from .io import read_records  # imported lazily: json and csv only

        yield from read_records(path)

    def encode_inputs(self, record: Record) -> Any:
        """Encode one raw record for inference, where the target may be missing.

        Must return what :meth:`collate` and :meth:`example_inputs` accept (the same
        structure as :meth:`encode`; put a placeholder where the target would be). Raise
        :class:`~privet.errors.DropRecord` (or ``KeyError``/``ValueError``/``TypeError``)
        for a record that cannot be encoded: it becomes an error entry. Default:
        :meth:`encode`.
        """
        return self.encode(record)

    def postprocess(self, outputs: list[np.ndarray], records: list[Record]) -> list[dict[str, Any]]:
        """Turn the outputs of one batch into one JSON-able dict per record.

        ``outputs`` are the module's outputs as numpy arrays (batch first), ``records``
        the batch's input records as the cleaners left them, in order. Default: the
        :attr:`task`'s post-processing: ``classification`` -> ``{"label", "probabilities"}``
        (softmax of output 0, labels from :meth:`class_names`); ``regression`` and
        ``forecast`` -> ``{"prediction"}`` (output 0, a number or a list); others ->
        ``{"outputs": [...]}``. Override to map labels, undo a target scaling (forecasts
        in original units) or decode tokens.
        """
        return self.task_definition().postprocess(self, outputs, records)

    def generate(self, module: Any, prompt: str | list[dict[str, str]], *,
                 max_new_tokens: int = 100, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 raw: bool = False) -> Iterator[str]:
        """Yield the text ``module`` writes after ``prompt``, piece by piece, as it is sampled.

        What ``privet generate`` and ``privet chat`` stream. ``prompt`` is a text, or a chat:
        a list of ``{"role": ..., "content": ...}`` messages. A model with a chat template
        renders a text prompt as one user turn unless ``raw`` (continue the text as given).
        ``temperature`` 0 is greedy; ``seed`` makes sampling reproducible. Only new text is
        yielded, never the prompt. Default: this model does not generate text.
        """
        from .errors import UsageError

        raise UsageError(f"model {self.name!r} does not generate text; privet generate and "
                         f"privet chat need a language model (text.gpt, llm.causal_lm)")

    def predict_batch(self, run: Any, records: list[Record], items: list[Any]) -> list[dict[str, Any]]:
        """Predict one batch with an exported artifact; one dict per record.

        ``run`` maps ``{input name: numpy array}`` to the list of output arrays (it runs
        the ONNX Runtime session or the loaded program); ``items`` are the results of
        :meth:`encode_inputs` for ``records``. Default: :meth:`collate`, then
        :meth:`example_inputs`, one call of ``run``, then :meth:`postprocess`. A language
        model overrides this to generate text by calling ``run`` in a loop.
        """
        import numpy as np

        inputs = self.example_inputs(self.collate(items))
        feed = {name: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
                for name, value in zip(self.input_names(), inputs)}
        return self.postprocess(run(feed), records)


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


class Optimizer(Component):
    """Builds a ``torch.optim.Optimizer`` over the parameters to train.

    The pipeline names it in ``train.optimizer.name``; its other keys there (besides
    ``lr``) are this component's ``Options``. The learning rate is passed to
    :meth:`build` rather than kept in the options because the core resolves it: the
    pipeline's ``lr``, else the model's :meth:`Model.default_lr`, else 1e-3.
    """

    kind = "optimizer"

    @abc.abstractmethod
    def build(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """The optimizer over ``params`` (an iterable of tensors or of param groups)."""


class Exporter(Component):
    """Writes an inference artifact from a trained model and loads it back for checks.

    ``export`` writes into ``out_dir`` and returns the artifact path; ``load`` returns a
    callable mapping named numpy inputs to a list of numpy outputs, which the core uses
    to verify the artifact against the eager model and which ``privet predict`` runs.
    """

    kind = "exporter"
    suffix: ClassVar[str] = ""
    #: Whether the artifact is a program (TorchScript, ``.pt2``): ``privet predict`` and
    #: ``generate`` then run it only with ``--trust-code``. ONNX and weight folders are data.
    artifact_is_code: ClassVar[bool] = True
    #: True for an exporter that needs no traced example inputs and checks its artifact
    #: against the trained model itself (a language model merged into a Hugging Face
    #: folder). The core then skips tracing and elementwise verification and calls
    #: ``export(module, (), out_dir, input_names, output_names, model=..., records=...)``
    #: with the model component and up to 64 cached validation examples; the exporter
    #: puts its comparison in ``self.verification`` (``{"validation": {"max_abs_diff": x,
    #: "ok": bool, ...}}``). Its artifact may be a folder.
    verifies_itself: ClassVar[bool] = False

    @abc.abstractmethod
    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str]) -> Any:
        """Write the artifact into ``out_dir`` and return its path.

        An implementation may also accept ``dynamic_axes`` (name -> {axis: label}, from
        :meth:`Model.dynamic_axes`); the core passes it only to exporters whose
        signature names it. Free-text ``self.notes`` (list of str) and ``self.details``
        (dict) set during export go into the export report.
        """

    @abc.abstractmethod
    def load(self, path: Any) -> Any:
        ...

    def load_module(self, path: Any) -> Any:
        """The artifact at ``path`` as a ``torch.nn.Module`` that :meth:`Model.generate` takes
        (``privet generate`` on an export). Default: this artifact is not a module."""
        raise ExportError(f"{path}: a {self.name or type(self).__name__} artifact cannot be loaded "
                          f"as a module for generation; generate from the run folder instead")


class KeyProvider(Component):
    """Fetches an encryption key named by a reference ``NAME:ARGUMENT`` in the pipeline file.

    ``security.encryption.key: "env:PRIVET_KEY"`` asks the provider registered as ``env``
    for the key with argument ``PRIVET_KEY``. A provider for a key service (KMS, Vault)
    is a plugin. The pipeline file and the run folder hold only the reference.
    """

    kind = "key_provider"

    @abc.abstractmethod
    def load(self, argument: str, base_dir: Any) -> bytes:
        """The 32-byte key. ``base_dir`` is the pipeline file's folder (for relative paths).

        Raise :class:`privet.crypto.KeyMissingError` (a :class:`PrivetError`) with one line
        saying what is missing; :func:`privet.crypto.decode_key` turns base64 text into the key.
        """


class PrivacyMechanism(Component):
    """A privacy mechanism the ``privacy:`` section of a pipeline file selects by name.

    ``privacy: {mechanism: dp-sgd, target_epsilon: 8}`` picks the mechanism registered as
    ``dp-sgd`` and validates the other keys against its ``Options``. The core does
    nothing else with it: the engine puts the instance on ``run.components.privacy`` and
    the plugin that registered it applies it in its own ``wrap_training`` (per-sample
    gradients, noise, accounting), using the loop's extension points on
    :class:`privet.TrainingObjects` and ``run.report_extra`` for its report.
    """

    kind = "privacy"


BASES: dict[str, type[Component]] = {
    "source": Source,
    "cleaner": Cleaner,
    "augmenter": Augmenter,
    "model": Model,
    "optimizer": Optimizer,
    "scheduler": Scheduler,
    "exporter": Exporter,
    "key_provider": KeyProvider,
    "privacy": PrivacyMechanism,
}

__all__ = [
    "Augmenter", "BadRecord", "BASES", "Cleaner", "Component", "DropRecord", "Exporter",
    "KeyProvider", "KINDS", "Model", "NoOptions", "Optimizer", "PrivacyMechanism", "Record",
    "Scheduler", "Shard", "Source",
    "StepOutput",
]
