"""What a run knows about itself: the objects run hooks and the training loop share.

``RunContext`` is handed to every run hook; ``TrainingObjects`` is what ``wrap_training``
may replace; ``RunPlan`` holds the numbers derived once per run (steps per epoch, total
steps, global batch) so that nothing recomputes them with its own rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from ..config import LoadedConfig, PipelineConfig
from ..storage import Storage


@attrs.define
class Components:
    """The instantiated components a pipeline file names."""

    source: Any
    cleaners: list[Any]
    augmenters: list[Any]
    model: Any
    scheduler: Any | None
    optimizer: Any | None = None


@attrs.define
class TrainingObjects:
    """What the ``wrap_training`` hook may replace: the module, optimizer and loader."""

    module: Any
    optimizer: Any
    train_loader: Any


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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def catalog(self) -> Any:
        return self.host.catalog

    @property
    def config_hash(self) -> str:
        return self.loaded.config_hash()
