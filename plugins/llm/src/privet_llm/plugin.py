"""Hook implementations of the ``llm`` plugin (entry point ``privet.plugins: llm``).

Kept light: torch, transformers and peft are imported inside the components' methods,
so ``privet --help`` and ``privet plugins`` stay fast.
"""

from __future__ import annotations

from importlib.resources import files

from privet import hookimpl

from .export import AdapterExporter, MergedExporter
from .model import CausalLM
from .sources import ChatSource, TextSource


@hookimpl
def register_sources(register):
    register("llm.chat", ChatSource)
    register("llm.text", TextSource)


@hookimpl
def register_models(register):
    register("llm.causal_lm", CausalLM)


@hookimpl
def register_exporters(register):
    register("merged", MergedExporter)
    register("adapter", AdapterExporter)


@hookimpl
def after_run(run, report):
    from .evaluation import evaluate_run  # imported lazily: generation needs torch

    evaluate_run(run, report)


@hookimpl
def starter_pipeline(modality):
    if modality == "llm":
        return files(__package__).joinpath("starter.yaml").read_text(encoding="utf-8")
    return None
