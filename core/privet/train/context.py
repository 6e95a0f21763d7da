"""What a run knows about itself: the objects run hooks and the training loop share.

``RunContext`` is handed to every run hook; ``TrainingObjects`` is what ``wrap_training``
may replace; ``RunPlan`` holds the numbers derived once per run (steps per epoch, total
steps, global batch) so that nothing recomputes them with its own rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import attrs

from ..config import LoadedConfig, PipelineConfig
from ..storage import Storage

if TYPE_CHECKING:
    from ..components import StepOutput


@attrs.define
class Components:
    """The instantiated components a pipeline file names."""

    source: Any
    cleaners: list[Any]
    augmenters: list[Any]
    model: Any
    scheduler: Any | None
    optimizer: Any | None = None
    #: the ``privacy.mechanism`` component (``None`` without a ``privacy:`` section); the
    #: plugin that registered it applies it in its ``wrap_training``
    privacy: Any | None = None


@attrs.define
class TrainingObjects:
    """What the ``wrap_training`` hook may replace or extend.

    ``module``, ``optimizer`` and ``train_loader`` may be replaced. The other fields are
    extension points the loop honours, so that a plugin such as differential privacy
    needs no change to the loop:

    * ``extra_state``: name -> object with ``state_dict()``/``load_state_dict()``. Saved
      into every checkpoint's ``state.pt`` (so the state must be tensors and plain
      containers: it is loaded with ``weights_only=True``) and restored on resume.
    * ``metrics``: callables returning ``{"group/name": value}``, logged to TensorBoard
      at every log interval and at the end of each epoch.
    * ``stop_checks``: callables run after every optimizer step; the first that returns
      a reason (text) stops the run cleanly: the epoch is ended (validation,
      checkpoint) and ``report.json`` says ``stop_reason``. In a distributed run every
      rank must give the same answer (derive it from state the ranks share).
    * ``micro_step``: called after the backward of each micro-batch of an accumulation
      window except the last (Opacus' virtual steps clip and accumulate per-sample
      gradients there, so only one micro-batch's are held at a time).
    * ``sum_loss``: backpropagate each micro-batch's summed loss and leave the
      normalisation to the optimizer (Opacus' ``DPOptimizer`` divides by the expected
      batch size); the loop then never rescales gradients itself.
    * ``backward``: called with each micro-batch's :class:`privet.StepOutput` in place
      of the loop's own ``loss_sum.backward()`` (Opacus' ghost clipping runs its two
      backward passes over ``StepOutput.per_example`` there). Setting it also takes the
      loop off its one-batch fast path, so every micro-batch comes through here.
    """

    module: Any
    optimizer: Any
    train_loader: Any
    extra_state: dict[str, Any] = attrs.field(factory=dict)
    metrics: list[Callable[[], dict[str, float]]] = attrs.field(factory=list)
    stop_checks: list[Callable[[], str | None]] = attrs.field(factory=list)
    micro_step: Callable[[], None] | None = None
    sum_loss: bool = False
    backward: Callable[[StepOutput], None] | None = None


@attrs.define(frozen=True)
class RunPlan:
    """Numbers derived once from the config, the loader and the world size."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    global_batch: int

    @classmethod
    def from_loader(cls, train_cfg: Any, batches_per_epoch: int, world_size: int) -> "RunPlan":
        steps_per_epoch = -(-batches_per_epoch // train_cfg.accumulate)  # ceil: a short last step counts
        total = steps_per_epoch * train_cfg.epochs
        if train_cfg.max_steps:
            total = min(total, train_cfg.max_steps)
        return cls(batches_per_epoch=batches_per_epoch, steps_per_epoch=steps_per_epoch,
                   total_steps=total,
                   global_batch=train_cfg.batch_size * train_cfg.accumulate * world_size)


@attrs.define
class RunContext:
    """What run hooks receive: the config, the run folder, the rank, the components.

    ``storage`` is the only way to read or write the run folder. ``plan`` is set once the
    training objects exist (after ``wrap_training``); ``prepared`` once the data is.
    ``report_extra`` holds what plugins add to the report and the manifest.
    """

    config: PipelineConfig
    loaded: LoadedConfig
    run_dir: Path
    storage: Storage
    host: Any
    components: Components
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: Any = None
    prepared: Any = None
    plan: RunPlan | None = None
    resumed: bool = False
    #: sections a plugin adds to ``report.json`` and ``manifest.json`` (``run.report_extra
    #: ["privacy"] = {...}``), written when the run ends; JSON values only
    report_extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def catalog(self) -> Any:
        return self.host.catalog

    @property
    def config_hash(self) -> str:
        return self.loaded.config_hash()
