"""EDA-style text augmenters (Wei & Zou, 2019), part-of-speech aware with WordNet, and
back-translation (local MarianMT folders or your own translator).

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

from .synonyms import (DEFAULT_WORDNET, OTHER_POS, Combined, SynonymSource, Thesaurus, WordNet,
                       wordnet_pos)

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
    #: Fields ``text.pos_tag`` writes: with them, WordNet synonyms keep the word's part of
    #: speech ("dog" the noun never becomes "tag" the verb). Records without them: any.
    pos_field: Optional[str] = "pos"
    tokens_field: str = "tokens"

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


def word_pos(text: str, tokens: Any, tags: Any) -> list[str] | None:
    """The WordNet part of speech of each whitespace word of ``text`` (``OTHER_POS`` for a
    word whose tag WordNet does not cover), from the tokens and tags of ``text.pos_tag``;
    None unless the tokens spell the words exactly (the text changed after tagging).

    A word takes the tag of its first token with a letter or digit: ``"dog,"`` is the
    tokens ``dog`` and ``,``, and its tag is the noun's.
    """
    if (not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags)
            or not all(isinstance(t, str) for t in tokens + tags)):
        return None
    pairs = iter(zip(tokens, tags))
    out: list[str] = []
    for word in text.split():
        built, pos = "", None
        while len(built) < len(word):
            token, tag = next(pairs, ("", ""))
            if not token:
                return None
            built += token
            if pos is None and any(c.isalnum() for c in token):
                pos = wordnet_pos(tag) or OTHER_POS
        if built != word:
            return None
        out.append(pos or OTHER_POS)
    return out if next(pairs, None) is None else None


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
        pos_field = getattr(o, "pos_field", None)
        tags = (word_pos(text, record.get(o.tokens_field), record.get(pos_field))
                if pos_field and pos_field in record else None)
        changed = self.change(words, rng, tags)
        if changed:
            record = dict(record)
            record[o.field] = " ".join(changed)
        return record

    def _count(self, n: int, rng: np.random.Generator) -> int:
        """How many operations on ``n`` words: Binomial(n, alpha), at least one."""
        return max(1, int(rng.binomial(n, self.options.alpha)))

    @abc.abstractmethod
    def change(self, words: list[str], rng: np.random.Generator,
               pos: list[str] | None = None) -> list[str]:
        """The changed list of words (may be the same list when nothing applies); ``pos``:
        each word's WordNet part of speech, when the record was tagged."""


class SynonymReplacement(_WordAugmenter):
    """Replace words by a random synonym from a thesaurus file and/or WordNet.

    Punctuation around a word and its capitalisation are kept (``Happy,`` -> ``Glad,``).
    """

    Options = _SynonymOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.source = _synonym_source(self.options, required=True)

    def change(self, words: list[str], rng: np.random.Generator,
               pos: list[str] | None = None) -> list[str]:
        assert self.source is not None
        candidates = []
        for i, word in enumerate(words):
            pre, core, post = _split(word)
            if core and self.source.synonyms(core.lower(), pos[i] if pos else None):
                candidates.append(i)
        if not candidates:
            return words
        n = min(len(candidates), self._count(len(words), rng))
        out = list(words)
        for i in rng.choice(len(candidates), size=n, replace=False):
            idx = candidates[int(i)]
            pre, core, post = _split(out[idx])
            synonyms = self.source.synonyms(core.lower(), pos[idx] if pos else None)
            out[idx] = pre + _match_case(synonyms[int(rng.integers(len(synonyms)))], core) + post
        return out


class RandomInsertion(_WordAugmenter):
    """Insert words at random positions: a synonym of a random word of the text when a
    thesaurus or WordNet is configured, otherwise a copy of a random word of the text."""

    Options = _SynonymOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.source = _synonym_source(self.options, required=False)

    def change(self, words: list[str], rng: np.random.Generator,
               pos: list[str] | None = None) -> list[str]:
        out = list(words)
        for _ in range(self._count(len(words), rng)):
            picked = int(rng.integers(len(words)))
            core = _split(words[picked])[1]
            word = core or words[0]
            if self.source is not None:
                synonyms = self.source.synonyms(word.lower(), pos[picked if core else 0] if pos else None)
                if synonyms:
                    word = synonyms[int(rng.integers(len(synonyms)))]
            out.insert(int(rng.integers(len(out) + 1)), word)
        return out


class RandomSwap(_WordAugmenter):
    """Swap two random words, Binomial(words, alpha) times (at least once)."""

    Options = _WordOptions

    def change(self, words: list[str], rng: np.random.Generator,
               pos: list[str] | None = None) -> list[str]:
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

    def change(self, words: list[str], rng: np.random.Generator,
               pos: list[str] | None = None) -> list[str]:
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


def _seq2seq_folder(_instance: Any, attribute: Any, value: Optional[Path]) -> None:
    if value is not None and not (Path(value) / "config.json").is_file():
        raise ValueError(f"{attribute.name}: {value} is not a local translation model folder (no "
                         f"config.json); save one with save_pretrained() or copy a MarianMT "
                         f"folder there. Privet never downloads a model")


class Seq2SeqTranslator:
    """Two local translation model folders (Hugging Face format, e.g. MarianMT ``opus-mt``),
    one per direction, loaded through ``transformers`` from disk only: ``local_files_only``,
    no remote code. Loaded on first use, once per process; runs on the CPU."""

    def __init__(self, forward: Path, backward: Path, *, sample: bool, max_new_tokens: int) -> None:
        self.paths = {"forward": Path(forward), "backward": Path(backward)}
        self.sample = sample
        self.max_new_tokens = max_new_tokens
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _load(self, direction: str) -> tuple[Any, Any]:
        if direction not in self._loaded:
            try:
                from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # slow import: lazy
            except ImportError as err:
                raise ConfigError("text.back_translation with local models needs transformers; "
                                  "pip install 'privet-text[backtranslate]'") from err
            path = self.paths[direction]
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                          trust_remote_code=False)
                model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True,
                                                              trust_remote_code=False)
            except (OSError, ValueError, ImportError) as err:
                raise ConfigError(f"cannot load the translation model in {path}: "
                                  f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                                  ) from err
            self._loaded[direction] = (tokenizer, model.eval())
        return self._loaded[direction]

    def translate(self, text: str, direction: str, seed: int) -> str:
        """``text`` through the ``forward`` or ``backward`` model; sampling draws from a torch
        generator seeded by ``seed``, leaving the process's own random state untouched."""
        import torch

        # loading draws random initial weights before it reads the real ones: inside too
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            tokenizer, model = self._load(direction)
            batch = tokenizer([text], return_tensors="pt", truncation=True)
            torch.manual_seed(seed)
            out = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=self.sample,
                                 num_beams=1)
        return str(tokenizer.decode(out[0], skip_special_tokens=True)).strip()

    def __getstate__(self) -> dict[str, Any]:  # worker processes load their own copies
        return {**self.__dict__, "_loaded": {}}


class BackTranslation(Augmenter):
    """Paraphrase by translating to a pivot language and back.

    Either two local model folders, ``forward_model`` (source -> pivot) and
    ``backward_model`` (pivot -> source), in Hugging Face format (MarianMT ``opus-mt-en-de``
    and ``opus-mt-de-en``, say), run through ``transformers`` (``pip install
    'privet-text[backtranslate]'``); ``sample: true`` draws a different paraphrase per epoch,
    seeded like every augmenter. Or your own translator: ``translator`` names a function
    ``translate(text, source, target) -> str``; with ``model_path`` it names a factory
    instead, ``factory(model_path)`` called once per process and returning that function.
    Privet ships no translation model and never downloads one.
    """

    @attrs.define(frozen=True)
    class Options:
        translator: Optional[str] = attrs.field(default=None, validator=_callable_ref)
        model_path: Optional[Path] = None
        forward_model: Optional[Path] = attrs.field(default=None, validator=_seq2seq_folder)
        backward_model: Optional[Path] = attrs.field(default=None, validator=_seq2seq_folder)
        #: Sample the translations (a new paraphrase each epoch) instead of greedy decoding.
        sample: bool = False
        max_new_tokens: int = attrs.field(default=256, validator=attrs.validators.ge(1))
        source_lang: str = "en"
        pivot_lang: str = "de"
        field: str = "text"
        p: float = attrs.field(default=0.5, validator=_fraction)

        def __attrs_post_init__(self) -> None:
            models = (self.forward_model, self.backward_model)
            if self.translator is not None and any(m is not None for m in models):
                raise ValueError("text.back_translation takes either 'translator' or "
                                 "'forward_model' and 'backward_model', not both")
            if self.translator is None and (None in models):
                if any(m is not None for m in models):
                    raise ValueError("text.back_translation needs both 'forward_model' (source -> "
                                     "pivot) and 'backward_model' (pivot -> source)")
                hint = (f" (model_path {self.model_path} needs one too: a factory that loads it)"
                        if self.model_path is not None else "")
                raise ValueError(
                    "text.back_translation needs 'translator: package.module:function', a function "
                    "translate(text, source, target) -> str or, with model_path, a factory that loads "
                    f"your local model{hint}; or 'forward_model' and 'backward_model', two local "
                    "MarianMT folders; Privet never downloads a translation model")
            if self.model_path is not None and not Path(self.model_path).exists():
                raise ValueError(f"model_path not found: {self.model_path}")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        self._target = resolve(o.translator) if o.translator is not None else None
        self._translate: Callable[[str, str, str], str] | None = None
        self._models = (Seq2SeqTranslator(o.forward_model, o.backward_model, sample=o.sample,
                                          max_new_tokens=o.max_new_tokens)
                        if o.forward_model is not None and o.backward_model is not None else None)

    def _translator(self) -> Callable[[str, str, str], str]:
        if self._translate is None:
            o = self.options
            assert self._target is not None
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
        if self._models is not None:
            seed = int(rng.integers(1 << 62))
            back = self._models.translate(self._models.translate(text, "forward", seed),
                                          "backward", seed + 1)
        else:
            translate = self._translator()
            pivot = translate(text, o.source_lang, o.pivot_lang)
            back = translate(pivot, o.pivot_lang, o.source_lang) if isinstance(pivot, str) else None
            if not isinstance(back, str):
                raise DataError(f"translator {o.translator!r} returned a "
                                f"{type(back if isinstance(pivot, str) else pivot).__name__}, "
                                f"not a string")
        record = dict(record)
        record[o.field] = back
        return record

    def __getstate__(self) -> dict[str, Any]:  # a factory's function is made again per process
        return {**self.__dict__, "_translate": None}


__all__ = ["BackTranslation", "RandomDeletion", "RandomInsertion", "RandomSwap",
           "Seq2SeqTranslator", "SynonymReplacement", "resolve", "word_pos"]
