"""Privet: train PyTorch models on private data, end to end.

This module is the one place plugin authors import from. Everything else in the
package may change between releases.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .components import (
    Augmenter,
    BadRecord,
    Cleaner,
    Component,
    Exporter,
    Model,
    NoOptions,
    Record,
    Scheduler,
    Shard,
    Source,
    StepOutput,
)
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DropRecord,
    ExportError,
    PluginError,
    PrivetError,
    TrainingError,
    UnknownComponentError,
    UsageError,
)
from .hookspecs import hookimpl

__all__ = [
    "__version__",
    "Augmenter",
    "BadRecord",
    "CheckpointError",
    "Cleaner",
    "Component",
    "ConfigError",
    "DataError",
    "DropRecord",
    "ExportError",
    "Exporter",
    "Model",
    "NoOptions",
    "PluginError",
    "PrivetError",
    "Record",
    "Scheduler",
    "Shard",
    "Source",
    "StepOutput",
    "TrainingError",
    "UnknownComponentError",
    "UsageError",
    "hookimpl",
]
