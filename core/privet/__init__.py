"""Privet: train PyTorch models on private data, end to end.

This module is the one place plugin authors import from. Everything else in the
package may change between releases.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported lazily (on first attribute access) to improve start-up time: `privet --help`
# imports this package but needs none of attrs, pluggy or the component classes.
_EXPORTS = {
    "Augmenter": "components", "BadRecord": "components", "Cleaner": "components",
    "Component": "components", "Exporter": "components", "KeyProvider": "components",
    "Model": "components",
    "NoOptions": "components", "Optimizer": "components", "Record": "components",
    "PrivacyMechanism": "components",
    "Scheduler": "components", "Task": "train.metrics",
    "Shard": "components", "Source": "components", "StepOutput": "components",
    "CheckpointError": "errors", "ConfigError": "errors", "DataError": "errors",
    "DropRecord": "errors", "ExportError": "errors", "PluginError": "errors",
    "PrivetError": "errors", "TrainingError": "errors", "UnknownComponentError": "errors",
    "UsageError": "errors", "hookimpl": "hookspecs", "Columns": "data.columns",
    "OptionValueError": "validators", "existing_path": "validators",
    "existing_paths": "validators", "positive": "validators", "probability": "validators",
    "non_negative": "validators", "at_least": "validators",
    "RunContext": "train.context", "TrainingObjects": "train.context",
    "load_trained": "train.loading",
    "RecordStream": "data.records", "record_tables": "data.records",
    "in_record_order": "data.arrow",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'privet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .components import (Augmenter, BadRecord, Cleaner, Component, Exporter, KeyProvider, Model,
                             NoOptions, Optimizer, PrivacyMechanism, Record, Scheduler, Shard,
                             Source, StepOutput)
    from .errors import (CheckpointError, ConfigError, DataError, DropRecord, ExportError,
                         PluginError, PrivetError, TrainingError, UnknownComponentError,
                         UsageError)
    from .data.columns import Columns
    from .data.arrow import in_record_order
    from .data.records import RecordStream, record_tables
    from .hookspecs import hookimpl
    from .train.context import RunContext, TrainingObjects
    from .train.loading import load_trained
    from .train.metrics import Task
    from .validators import (OptionValueError, at_least, existing_path, existing_paths,
                             non_negative, positive, probability)
