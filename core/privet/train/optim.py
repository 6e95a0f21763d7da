"""The optimizer and the learning rate of a run, and the check of what it monitors.

The optimizer is a component (``train.optimizer.name`` names one registered through
``register_optimizers``); the learning rate is the pipeline's, else the model's
:meth:`~privet.Model.default_lr`, else :data:`FALLBACK_LR`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..catalog import Catalog
    from ..components import Model, Scheduler
    from ..config import LoadedConfig, OptimizerConfig, PipelineConfig

#: The learning rate when neither the pipeline nor the model gives one.
FALLBACK_LR = 1e-3


def resolve_lr(optimizer_cfg: OptimizerConfig, default_lr: float | None) -> float:
    """The learning rate to train with: the pipeline's, else the model's, else 1e-3."""
    if optimizer_cfg.lr is not None:
        return float(optimizer_cfg.lr)
    if default_lr is not None:
        value = float(default_lr)
        if not 0 < value < float("inf"):
            raise ConfigError(f"the model's default_lr() returned {default_lr!r}; set "
                              f"train.optimizer.lr", path="train.optimizer.lr")
        return value
    return FALLBACK_LR


def build_optimizer(optimizer_cfg: OptimizerConfig, params: Any, catalog: Catalog,
                    default_lr: float | None) -> tuple[torch.optim.Optimizer, float]:
    """Build the optimizer ``train.optimizer`` names over ``params``.

    Returns the optimizer and the learning rate it was given (for the report). Its
    options are structured and validated here too, so a caller that skipped
    :func:`privet.config.validate_components` still gets a key-path error.
    """
    from ..config import make_converter, structure

    entry = catalog.get("optimizer", optimizer_cfg.name, key_path="train.optimizer.name")
    options = structure(make_converter(), optimizer_cfg.options, entry.cls.Options,
                        prefix="train.optimizer")
    lr = resolve_lr(optimizer_cfg, default_lr)
    return entry.cls(options).build(params, lr), lr


def monitorable(model: Model) -> list[str]:
    """The keys ``train.early_stopping.monitor`` may name: ``val/`` + each model metric."""
    return [f"val/{name}" for name in model.metric_names()]


def check_monitor(config: LoadedConfig | PipelineConfig, model: Model,
                  scheduler: Scheduler | None = None) -> None:
    """Refuse a monitored metric the model does not produce, before any training.

    Checks ``train.early_stopping.monitor`` and, for a scheduler that steps on a metric
    (``interval = "metric"``), the scheduler's ``monitor``. Raises a one-line
    :class:`~privet.ConfigError` naming the key and the metrics the model does produce.
    """
    loaded = config if hasattr(config, "config") else None
    cfg = loaded.config if loaded is not None else config
    wanted: list[tuple[str, str]] = []
    if cfg.train.early_stopping is not None:
        wanted.append(("train.early_stopping.monitor", cfg.train.early_stopping.monitor))
    if scheduler is not None and scheduler.interval == "metric":
        wanted.append(("train.scheduler.options.monitor", scheduler.monitor))
    available = monitorable(model)
    for key, metric in wanted:
        if metric not in available:
            file = loaded.file if loaded is not None else None
            line = _line(loaded, key)
            raise ConfigError(f"model {model.name!r} does not report {metric!r}; it reports "
                              f"{', '.join(available)}", path=key, file=file, line=line)


def _line(loaded: LoadedConfig | None, key: str) -> int | None:
    """The pipeline file line of ``key`` or of its closest parent that has one."""
    if loaded is None or not loaded.lines:
        return None
    parts = key.split(".")
    while parts:
        if ".".join(parts) in loaded.lines:
            return loaded.lines[".".join(parts)]
        parts.pop()
    return None
