"""Tokenizers trained on the training split: Hugging Face ``tokenizers`` (BPE, Unigram)
or a spaCy blank pipeline as a word tokenizer.

Nothing is downloaded: subword models are trained from the records in ``Model.fit``,
and spaCy's ``blank(lang)`` pipelines carry only rule-based tokenization. The whole
tokenizer is a JSON-serialisable dict (:meth:`TextTokenizer.state`), saved with the
model's state in checkpoints and exports and restored by :meth:`TextTokenizer.from_state`.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from itertools import islice
from typing import Any, Iterable, Literal, Optional

import attrs
from privet import ConfigError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0..3 in every vocabulary


def _spacy_installed(_instance: Any, attribute: Any, value: str) -> None:
    if value == "spacy" and importlib.util.find_spec("spacy") is None:
        raise ValueError("kind 'spacy' needs spaCy, which is not installed; "
                         "pip install 'privet-text[spacy]' or use kind 'bpe'")


@attrs.define(frozen=True)
class TokenizerOptions:
    """How the tokenizer is built (``model.options.tokenizer`` in a pipeline file)."""

    #: ``bpe`` (byte-level, like GPT-2: any input encodes, decoding is exact),
    #: ``unigram`` (SentencePiece-style) or ``spacy`` (words of ``spacy.blank(lang)``).
    kind: Literal["bpe", "unigram", "spacy"] = attrs.field(default="bpe", validator=_spacy_installed)
    vocab_size: int = attrs.field(default=8000, validator=attrs.validators.ge(len(SPECIALS) + 1))
    min_frequency: int = 2
    lowercase: bool = False
    #: spaCy language code for ``kind: spacy`` (``en``, ``zh``, ``de`` ...).
    lang: str = "en"
    #: Train on at most this many texts (the first ones of the training split); null: all.
    max_train_texts: Optional[int] = None


class TextTokenizer:
    """A trained tokenizer with fixed special ids: pad 0, unk 1, bos 2, eos 3."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, kind: str, *, hf: Any = None, lang: str = "en",
                 vocab: list[str] | None = None, lowercase: bool = False) -> None:
        self.kind = kind
        self.hf = hf
        self.lang = lang
        self.lowercase = lowercase
        self.vocab = vocab or []
        self._index = {w: i for i, w in enumerate(self.vocab)}
        self._nlp: Any = None

    # -- training -------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], options: TokenizerOptions) -> TextTokenizer:
        if options.max_train_texts is not None:
            texts = islice(texts, options.max_train_texts)
        if options.kind == "spacy":
            return cls._train_words(texts, options)
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if options.kind == "bpe":
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer: Any = trainers.BpeTrainer(
                vocab_size=options.vocab_size, min_frequency=options.min_frequency,
                special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False)
        else:
            tok = Tokenizer(models.Unigram())
            tok.pre_tokenizer = pre_tokenizers.Metaspace()
            tok.decoder = decoders.Metaspace()
            trainer = trainers.UnigramTrainer(
                vocab_size=options.vocab_size, special_tokens=SPECIALS, unk_token=UNK,
                show_progress=False)
        if options.lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.train_from_iterator(texts, trainer=trainer)
        if tok.get_vocab_size() <= len(SPECIALS):
            raise ConfigError("the tokenizer learned no vocabulary: the training split has no text")
        return cls(options.kind, hf=tok, lowercase=options.lowercase)

    @classmethod
    def _train_words(cls, texts: Iterable[str], options: TokenizerOptions) -> TextTokenizer:
        tok = cls("spacy", lang=options.lang, lowercase=options.lowercase)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tok._words(text))
        words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                 if n >= options.min_frequency and w not in SPECIALS]
        vocab = SPECIALS + words[: options.vocab_size - len(SPECIALS)]
        if len(vocab) <= len(SPECIALS):
            raise ConfigError("the tokenizer learned no vocabulary: the training split has no "
                              "word seen min_frequency times")
        return cls("spacy", lang=options.lang, vocab=vocab, lowercase=options.lowercase)

    def _words(self, text: str) -> list[str]:
        if self._nlp is None:
            try:
                import spacy  # imported lazily: optional dependency, slow to import
            except ImportError as err:
                raise ConfigError("this run's tokenizer uses spaCy, which is not installed; "
                                  "pip install 'privet-text[spacy]'") from err
            try:
                self._nlp = spacy.blank(self.lang)
            except Exception as err:  # spaCy raises its own ImportError/KeyError subclasses
                raise ConfigError(f"spaCy has no blank pipeline for language {self.lang!r} "
                                  f"({type(err).__name__}); use a code such as 'en' or 'zh'") from err
        if self.lowercase:
            text = text.lower()
        return [t.text for t in self._nlp.tokenizer(text) if not t.is_space]

    # -- use ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size() if self.hf is not None else len(self.vocab)

    def encode(self, text: str) -> list[int]:
        if self.hf is not None:
            return self.hf.encode(text, add_special_tokens=False).ids
        unk = self.unk_id
        return [self._index.get(w, unk) for w in self._words(text)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.hf is not None:
            return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) >= len(SPECIALS)]
        if self.hf is not None:
            return self.hf.decode(ids, skip_special_tokens=True)
        return " ".join(self.vocab[i] for i in ids if i < len(self.vocab))

    # -- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"kind": "bpe", "json": <tokenizer.json text>}`` or a word list."""
        if self.hf is not None:
            return {"kind": self.kind, "json": self.hf.to_str()}
        return {"kind": self.kind, "lang": self.lang, "vocab": self.vocab, "lowercase": self.lowercase}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TextTokenizer:
        kind = state.get("kind")
        if kind in ("bpe", "unigram"):
            from tokenizers import Tokenizer

            return cls(kind, hf=Tokenizer.from_str(state["json"]))
        if kind == "spacy":
            return cls("spacy", lang=state["lang"], vocab=list(state["vocab"]),
                       lowercase=bool(state.get("lowercase")))
        raise ConfigError(f"unknown tokenizer state kind {kind!r}; the run was saved by a newer "
                          f"privet-text")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers started with spawn
        return self.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(TextTokenizer.from_state(state).__dict__)


__all__ = ["TextTokenizer", "TokenizerOptions", "SPECIALS"]
