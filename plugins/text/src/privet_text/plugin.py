"""Hook implementations of the ``text`` plugin (entry point ``privet.plugins: text``).

Privet imports this module when it loads plugins, so it stays light: no torch, no
tokenizers, no spaCy at import time (the component modules import them in methods).
"""

from __future__ import annotations

from importlib.resources import files

from privet import hookimpl

from .augmenters import (BackTranslation, RandomDeletion, RandomInsertion, RandomSwap,
                         SynonymReplacement)
from .cleaners import LanguageFilter, LengthFilter, Normalize, PosTag, StripHtml
from .dedupe import Dedupe
from .models import ClassifierModel, GPTModel
from .pii import RedactPii
from .sources import TextCsv, TextFiles, TextJsonl


@hookimpl
def register_sources(register):
    register("text.jsonl", TextJsonl)
    register("text.csv", TextCsv)
    register("text.files", TextFiles)


@hookimpl
def register_cleaners(register):
    register("text.strip_html", StripHtml)
    register("text.normalize", Normalize)
    register("text.redact_pii", RedactPii)
    register("text.dedupe", Dedupe)
    register("text.length_filter", LengthFilter)
    register("text.language_filter", LanguageFilter)
    register("text.pos_tag", PosTag)


@hookimpl
def register_augmenters(register):
    register("text.synonym", SynonymReplacement)
    register("text.random_insertion", RandomInsertion)
    register("text.random_swap", RandomSwap)
    register("text.random_deletion", RandomDeletion)
    register("text.back_translation", BackTranslation)


@hookimpl
def register_models(register):
    register("text.gpt", GPTModel)
    register("text.classifier", ClassifierModel)


@hookimpl
def starter_pipeline(modality):
    if modality == "text":
        return files(__package__).joinpath("starter.yaml").read_text(encoding="utf-8")
    return None
