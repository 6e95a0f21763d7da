"""EDA-style text augmenters (Wei & Zou, 2019) and back-translation.

Every augmenter takes ``p`` (probability that it touches a record at all) and, for the
word-level ones, ``alpha`` (the expected fraction of words changed). All randomness
comes from the ``numpy.random.Generator`` the engine passes, seeded per sample and
epoch, so a resumed run sees the same augmented text. Words are whitespace-separated;
for text written without spaces the word-level augmenters leave single "words" alone.
"""

from __future__ import annotations

import abc
import importlib
import re
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
import numpy as np
from privet import Augmenter, ConfigError, DataError, Record

from .synonyms import DEFAULT_WORDNET, Combined, SynonymSource, Thesaurus, WordNet

_AFFIX = re.compile(r"^(\W*)(.*?)(\W*)$", re.UNICODE | re.DOTALL)


def _fraction(_instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value}")


@attrs.define(frozen=True, kw_only=True)
class _WordOptions:
    field: str = "text"
    #: Probability that the augmenter changes a record at all.
    p: float = attrs.field(default=0.5, validator=_fraction)
    #: Expected fraction of the words changed when it does.
    alpha: float = attrs.field(default=0.1, validator=_fraction)


@attrs.define(frozen=True, kw_only=True)
class _SynonymOptions(_WordOptions):
    #: A thesaurus file: JSON ``{"word": ["synonym", ...]}`` or TSV ``word<TAB>synonym...``.
    thesaurus: Optional[Path] = attrs.field(default=None)
    #: Also use WordNet 3.0 (English) from ``wordnet_path``.
    wordnet: bool = False
    wordnet_path: Path = DEFAULT_WORDNET

    @thesaurus.validator
    def _exists(self, attribute: Any, value: Optional[Path]) -> None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"thesaurus file not found: {value}")


def _synonym_source(options: _SynonymOptions, *, required: bool) -> SynonymSource | None:
    sources: list[SynonymSource] = []
    if options.thesaurus is not None:
        sources.append(Thesaurus.load(options.thesaurus))
    if options.wordnet:
        sources.append(WordNet(options.wordnet_path))
    if not sources:
        if required:
            raise ConfigError("synonym replacement needs a synonym source: set 'thesaurus' to a "
                              "TSV/JSON file and/or 'wordnet: true' (WordNet data installed)")
        return None
    return sources[0] if len(sources) == 1 else Combined(sources)


def _split(word: str) -> tuple[str, str, str]:
    m = _AFFIX.match(word)
    assert m is not None
    return m.group(1), m.group(2), m.group(3)


def _match_case(synonym: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return synonym.upper()
    if like[:1].isupper():
        return synonym[:1].upper() + synonym[1:]
    return synonym


class _WordAugmenter(Augmenter):
    """Shared plumbing: decide with ``p``, split into words, change, join."""

    def augment(self, record: Record, rng: np.random.Generator) -> Record:
        o = self.options
        text = record.get(o.field)
        if not isinstance(text, str) or rng.random() >= o.p:
            return record
        words = text.split()
        if not words:
            return record
        changed = self.change(words, rng)
        if changed:
            record = dict(record)
            record[o.field] = " ".join(changed)
        return record

    def _count(self, n: int, rng: np.random.Generator) -> int:
        """How many operations on ``n`` words: Binomial(n, alpha), at least one."""
        return max(1, int(rng.binomial(n, self.options.alpha)))

    @abc.abstractmethod
    def change(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """The changed list of words (may be the same list when nothing applies)."""


class SynonymReplacement(_WordAugmenter):
    """Replace words by a random synonym from a thesaurus file and/or WordNet.

    Punctuation around a word and its capitalisation are kept (``Happy,`` -> ``Glad,``).
    """

    Options = _SynonymOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.source = _synonym_source(self.options, required=True)

    def change(self, words: list[str], rng: np.random.Generator) -> list[str]:
        assert self.source is not None
        candidates = []
        for i, word in enumerate(words):
            pre, core, post = _split(word)
            if core and self.source.synonyms(core.lower()):
                candidates.append(i)
        if not candidates:
            return words
        n = min(len(candidates), self._count(len(words), rng))
        out = list(words)
        for i in rng.choice(len(candidates), size=n, replace=False):
            idx = candidates[int(i)]
            pre, core, post = _split(out[idx])
            synonyms = self.source.synonyms(core.lower())
            out[idx] = pre + _match_case(synonyms[int(rng.integers(len(synonyms)))], core) + post
        return out


class RandomInsertion(_WordAugmenter):
    """Insert words at random positions: a synonym of a random word of the text when a
    thesaurus or WordNet is configured, otherwise a copy of a random word of the text."""

    Options = _SynonymOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.source = _synonym_source(self.options, required=False)

    def change(self, words: list[str], rng: np.random.Generator) -> list[str]:
        out = list(words)
        for _ in range(self._count(len(words), rng)):
            word = _split(words[int(rng.integers(len(words)))])[1] or words[0]
            if self.source is not None:
                synonyms = self.source.synonyms(word.lower())
                if synonyms:
                    word = synonyms[int(rng.integers(len(synonyms)))]
            out.insert(int(rng.integers(len(out) + 1)), word)
        return out


class RandomSwap(_WordAugmenter):
    """Swap two random words, Binomial(words, alpha) times (at least once)."""

    Options = _WordOptions

    def change(self, words: list[str], rng: np.random.Generator) -> list[str]:
        if len(words) < 2:
            return words
        out = list(words)
        for _ in range(self._count(len(words), rng)):
            i, j = rng.choice(len(out), size=2, replace=False)
            out[i], out[j] = out[j], out[i]
        return out


class RandomDeletion(_WordAugmenter):
    """Delete each word with probability ``alpha``; at least one word always stays."""

    Options = _WordOptions

    def change(self, words: list[str], rng: np.random.Generator) -> list[str]:
        if len(words) < 2:
            return words
        keep = rng.random(len(words)) >= self.options.alpha
        out = [w for w, k in zip(words, keep) if k]
        return out or [words[int(rng.integers(len(words)))]]


def _callable_ref(_instance: Any, attribute: Any, value: Optional[str]) -> None:
    if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
        raise ValueError(f"{attribute.name} must look like 'package.module:function', got {value!r}")


def resolve(ref: str) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the function."""
    module_name, attr = ref.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"translator {ref!r}: cannot import {module_name!r} ({err}); make it "
                          f"importable (pip install it or add its folder to PYTHONPATH)") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"translator {ref!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"translator {ref!r} is not callable")
    return obj


class BackTranslation(Augmenter):
    """Paraphrase by translating to a pivot language and back, with your own translator.

    ``translator`` names a function ``translate(text, source, target) -> str``. With
    ``model_path`` it names a factory instead: ``factory(model_path)`` is called once
    per process and returns that function, so a local model (e.g. a MarianMT folder)
    loads once. Privet ships no translation model and never downloads one.
    """

    @attrs.define(frozen=True)
    class Options:
        translator: Optional[str] = attrs.field(default=None, validator=_callable_ref)
        model_path: Optional[Path] = None
        source_lang: str = "en"
        pivot_lang: str = "de"
        field: str = "text"
        p: float = attrs.field(default=0.5, validator=_fraction)

        def __attrs_post_init__(self) -> None:
            if self.translator is None:
                hint = (f" (model_path {self.model_path} needs one too: a factory that loads it)"
                        if self.model_path is not None else "")
                raise ValueError(
                    "text.back_translation needs 'translator: package.module:function', a function "
                    "translate(text, source, target) -> str or, with model_path, a factory that loads "
                    f"your local model{hint}; Privet never downloads a translation model")
            if self.model_path is not None and not Path(self.model_path).exists():
                raise ValueError(f"model_path not found: {self.model_path}")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        assert self.options.translator is not None
        self._target = resolve(self.options.translator)
        self._translate: Callable[[str, str, str], str] | None = None

    def _translator(self) -> Callable[[str, str, str], str]:
        if self._translate is None:
            o = self.options
            self._translate = self._target(o.model_path) if o.model_path is not None else self._target
            if not callable(self._translate):
                raise ConfigError(f"translator factory {o.translator!r} returned "
                                  f"{type(self._translate).__name__}, not a function")
        return self._translate

    def augment(self, record: Record, rng: np.random.Generator) -> Record:
        o = self.options
        text = record.get(o.field)
        if not isinstance(text, str) or rng.random() >= o.p:
            return record
        translate = self._translator()
        pivot = translate(text, o.source_lang, o.pivot_lang)
        back = translate(pivot, o.pivot_lang, o.source_lang) if isinstance(pivot, str) else None
        if not isinstance(back, str):
            raise DataError(f"translator {o.translator!r} returned a "
                            f"{type(back if isinstance(pivot, str) else pivot).__name__}, not a string")
        record = dict(record)
        record[o.field] = back
        return record


__all__ = ["BackTranslation", "RandomDeletion", "RandomInsertion", "RandomSwap",
           "SynonymReplacement", "resolve"]
