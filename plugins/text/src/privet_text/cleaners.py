"""Text cleaners: HTML stripping, Unicode normalization, length and language filters.

Each cleaner works on the string fields named by ``fields`` (default ``["text"]``) and
drops a record with a reason (``privet.DropRecord``) when nothing usable is left. They
are pure functions of the record, so the prepared cache can be reused across runs.
PII redaction lives in :mod:`privet_text.pii`, deduplication in :mod:`privet_text.dedupe`.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from collections import Counter
from html.parser import HTMLParser
from typing import Any, Callable, Iterable, Literal, Optional

import attrs
import numpy as np
from privet import Cleaner, ConfigError, DropRecord, OptionValueError, Record

from .safe_regex import check_template, compile_regex


def _regex(_instance: Any, attribute: Any, value: Optional[str]) -> None:
    if value is not None:
        compile_regex(value, attribute.name)


def _regex_keys(_instance: Any, attribute: Any, value: dict[str, str]) -> None:
    for pattern, repl in value.items():
        option = f"{attribute.name}.{pattern}"
        compiled = compile_regex(pattern, option)
        if not isinstance(repl, str):
            raise OptionValueError(f"{option}: the replacement must be a string", attribute.name)
        check_template(compiled, repl, option)


def _nonempty(_instance: Any, attribute: Any, value: list) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must name at least one field")


def field_text(record: Record, field: str) -> str:
    """The string in ``record[field]``, or DropRecord if it is missing or not a string."""
    value = record.get(field)
    if not isinstance(value, str):
        raise DropRecord("missing_text", f"field {field!r}")
    return value


def _set(record: Record, field: str, value: str, why: str) -> None:
    if not value.strip():
        raise DropRecord("empty_text", f"{field!r} empty after {why}")
    record[field] = value


# --- text.strip_html ---------------------------------------------------------------------

_SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg"})
_BLOCK = frozenset({"p", "div", "br", "li", "ul", "ol", "tr", "td", "th", "table", "section",
                    "article", "header", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
                    "blockquote", "hr", "title", "dd", "dt"})
_HTML_HINT = re.compile(r"<[A-Za-z!/]|&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z]+);")


class _TextExtractor(HTMLParser):
    """Collects the text of a document, skipping script/style content; entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Text content of an HTML fragment: tags, comments, scripts and styles removed."""
    if not _HTML_HINT.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    out = "".join(parser.parts)
    out = re.sub(r"[ \t\r\f\v]+", " ", out)
    return re.sub(r" ?\n[\s]*", "\n", out).strip()


class StripHtml(Cleaner):
    """Remove HTML tags, comments, ``<script>``/``<style>`` content; decode entities.

    Block elements (``<p>``, ``<br>``, ``<li>`` ...) become line breaks so words of
    adjacent paragraphs do not run together. Text without markup passes unchanged.
    """

    @attrs.define(frozen=True)
    class Options:
        fields: list[str] = attrs.field(factory=lambda: ["text"], validator=_nonempty)

    def clean(self, record: Record) -> Record | None:
        for field in self.options.fields:
            _set(record, field, strip_html(field_text(record, field)), "strip_html")
        return record

    def clean_batch(self, records: list[Record]) -> list[Record | None | DropRecord]:
        """One markup search over the batch's texts joined by NULs (no match can span
        two of them); only the texts with markup are parsed."""
        return _per_field(records, self.options.fields, "strip_html", _strip_html_many)


def ascii_bytes(text: str) -> np.ndarray | None:
    """The characters of an ASCII ``text`` as a uint8 array (a copy of its bytes), else None:
    scans for a few characters over a batch then run in numpy, not once per text."""
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) if text.isascii() else None


def owners(positions: Iterable[int], ends: list[int]) -> list[int]:
    """The texts holding ``positions`` of texts joined by one separator each (``ends``:
    the position just past each separator), each once, in order."""
    found = positions if isinstance(positions, np.ndarray) else np.fromiter(positions, dtype=np.int64)
    return np.unique(np.searchsorted(np.asarray(ends), found, side="right")).tolist()


def _strip_html_many(texts: list[str]) -> list[str]:
    joined = "\0".join(texts)
    ends = list(itertools.accumulate(len(t) + 1 for t in texts))  # just past each text's NUL
    chars = ascii_bytes(joined)
    if chars is not None:  # a hint starts at a < or an &: try the pattern only there
        hits = _first_hits(joined, np.flatnonzero((chars == 60) | (chars == 38)).tolist(), ends)
    else:
        hits = [m.start() for m in _HTML_HINT.finditer(joined)]
    out = list(texts)
    for i in owners(hits, ends):
        out[i] = strip_html(texts[i])
    return out


def _first_hits(joined: str, starts: list[int], ends: list[int]) -> list[int]:
    """Where ``_HTML_HINT`` matches at one of ``starts``, the first in each text only."""
    hits: list[int] = []
    skip = 0  # the end of the last text found to hold markup
    for start in starts:
        if start >= skip and _HTML_HINT.match(joined, start):
            hits.append(start)
            skip = ends[bisect.bisect_right(ends, start)]
    return hits


def _per_field(records: list[Record], fields: list[str], why: str,
               transform: Callable[[list[str]], list[str]]) -> list[Record | None | DropRecord]:
    """``transform`` applied to each field over the whole batch, with the drops of
    :func:`field_text` and :func:`_set`: a record dropped at one field skips the next."""
    out: list[Record | None | DropRecord] = list(records)
    for field in fields:
        alive = [i for i, r in enumerate(out) if not isinstance(r, DropRecord)]
        texts = [out[i].get(field) for i in alive]  # type: ignore[union-attr]
        strings = [i for i, t in zip(alive, texts) if isinstance(t, str)]
        if len(strings) < len(alive):
            for i in set(alive) - set(strings):
                out[i] = DropRecord("missing_text", f"field {field!r}")
            texts = [out[i][field] for i in strings]  # type: ignore[index]
        for i, text in zip(strings, transform(texts)):
            if text.strip():
                out[i][field] = text  # type: ignore[index]
            else:
                out[i] = DropRecord("empty_text", f"{field!r} empty after {why}")
    return out


# --- text.normalize ----------------------------------------------------------------------

#: C0/C1 control characters (but tab and newline), zero-width characters and the BOM.
DEFAULT_REMOVE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"


class Normalize(Cleaner):
    """Unicode normalization (NFKC by default), control/special characters removed by regex,
    whitespace collapsed, optional lowercasing.

    ``remove`` is a regular expression whose matches are deleted (default: control and
    zero-width characters); ``replace`` maps further patterns to replacements, applied in
    order. Both run on RE2 (linear time; no backreferences or lookaround; ``\\d``/``\\s``
    are ASCII, ``\\p{Nd}``/``\\p{Z}`` cover other scripts). ``whitespace: collapse`` turns
    runs of spaces into one space and runs of blank lines into one line break;
    ``single_line`` turns all whitespace into single spaces.
    """

    @attrs.define(frozen=True)
    class Options:
        fields: list[str] = attrs.field(factory=lambda: ["text"], validator=_nonempty)
        form: Optional[Literal["NFC", "NFKC", "NFD", "NFKD"]] = "NFKC"
        remove: Optional[str] = attrs.field(default=DEFAULT_REMOVE, validator=_regex)
        replace: dict[str, str] = attrs.field(factory=dict, validator=_regex_keys)
        whitespace: Literal["collapse", "single_line", "keep"] = "collapse"
        lowercase: bool = False

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        # user patterns run on RE2 (linear time): see safe_regex
        self._remove = compile_regex(o.remove, "remove") if o.remove else None
        self._default_remove = o.remove == DEFAULT_REMOVE
        self._replace = [(compile_regex(p, f"replace.{p}"), r) for p, r in o.replace.items()]

    def normalize(self, text: str) -> str:
        o = self.options
        if o.form and not unicodedata.is_normalized(o.form, text):
            text = unicodedata.normalize(o.form, text)
        # Printable text (Python's definition) has no control, format or separator
        # characters but the ASCII space: nothing for the default pattern, no tabs, no
        # line breaks. Checking that is much cheaper than the regex passes it saves.
        printable = text.isprintable()
        if self._remove is not None and not (printable and self._default_remove):
            text = self._remove.sub("", text)
        for pattern, repl in self._replace:
            text = pattern.sub(repl, text)
        if o.whitespace == "collapse":
            if "  " in text or (not printable and _ODD_SPACE.search(text)):
                text = _SPACES.sub(" ", text)
            if not printable and "\n" in text:
                text = _BREAKS.sub("\n", text)
            text = text.strip()
        elif o.whitespace == "single_line":
            text = " ".join(text.split())
        if o.lowercase:
            text = text.lower()
        return text

    def clean(self, record: Record) -> Record | None:
        for field in self.options.fields:
            _set(record, field, self.normalize(field_text(record, field)), "normalize")
        return record

    def clean_batch(self, records: list[Record]) -> list[Record | None | DropRecord]:
        return _per_field(records, self.options.fields, "normalize", self.normalize_many)

    def normalize_many(self, texts: list[str]) -> list[str]:
        """``[self.normalize(t) for t in texts]``, cheaper when the texts are clean.

        Joined by spaces (printable, and a boundary no normalization form reaches
        across), the batch is checked once: if it is printable and in normal form, no
        text is changed by the form or by the default ``remove`` pattern, and only the
        whitespace and case steps remain, each over the list.
        """
        o = self.options
        joined = " ".join(texts)
        chars = ascii_bytes(joined)
        if chars is not None:  # ASCII: in every normal form; printable is 32..126
            printable = not np.any((chars < 32) | (chars == 127))
            doubled = bool(np.any((chars[1:] == 32) & (chars[:-1] == 32)))
        else:
            printable = joined.isprintable() and (not o.form or unicodedata.is_normalized(o.form, joined))
            doubled = "  " in joined
        if not (printable and not self._replace and (self._remove is None or self._default_remove)):
            return [self.normalize(t) for t in texts]
        if o.whitespace == "collapse":
            if doubled:  # printable: single spaces are the only blanks there are
                texts = [_SPACES.sub(" ", t) if "  " in t else t for t in texts]
            texts = [t.strip() for t in texts]
        elif o.whitespace == "single_line":
            texts = [" ".join(t.split()) for t in texts]
        return [t.lower() for t in texts] if o.lowercase else texts


# Runs of two or more horizontal blanks, or one that is not a plain space: single spaces
# (the common case) are not matched at all, so clean text is scanned without copying.
_SPACES = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_ODD_SPACE = re.compile(r"[^\S\n ]")
_BREAKS = re.compile(r" ?\n\s*")


# --- text.length_filter ------------------------------------------------------------------


class LengthFilter(Cleaner):
    """Drop records whose text is too short or too long, in characters and/or words.

    Words are whitespace-separated tokens; for scripts written without spaces (Chinese,
    Japanese) use the character limits. With ``truncate: true`` a text over
    ``max_chars`` is cut instead of dropped.
    """

    #: A filter on training data: ``privet predict`` still predicts short or long inputs.
    applies_at_inference = False

    @attrs.define(frozen=True)
    class Options:
        field: str = "text"
        min_chars: int = 1
        max_chars: Optional[int] = None
        min_words: Optional[int] = None
        max_words: Optional[int] = None
        truncate: bool = False

        def __attrs_post_init__(self) -> None:
            if self.max_chars is not None and self.max_chars < self.min_chars:
                raise ValueError("max_chars must be at least min_chars")
            if self.truncate and self.max_chars is None:
                raise ValueError("truncate needs max_chars")

    def clean(self, record: Record) -> Record | None:
        o = self.options
        text = field_text(record, o.field)
        n = len(text)
        if n < o.min_chars:
            raise DropRecord("too_short", f"{n} chars < {o.min_chars}", bad=False)
        if o.max_chars is not None and n > o.max_chars:
            if not o.truncate:
                raise DropRecord("too_long", f"{n} chars > {o.max_chars}", bad=False)
            text = record[o.field] = text[: o.max_chars]
        if o.min_words is not None or o.max_words is not None:
            words = len(text.split())
            if o.min_words is not None and words < o.min_words:
                raise DropRecord("too_short", f"{words} words < {o.min_words}", bad=False)
            if o.max_words is not None and words > o.max_words:
                raise DropRecord("too_long", f"{words} words > {o.max_words}", bad=False)
        return record


# --- text.language_filter ----------------------------------------------------------------


class LanguageFilter(Cleaner):
    """Keep records written in one of ``languages`` (ISO 639-1 codes), detected offline.

    Detection uses py3langid (97 languages, model shipped in the package as numpy arrays;
    nothing is downloaded). ``min_confidence`` (0-1) drops texts whose best language is
    too uncertain; very short texts are often uncertain, so pair it with a length filter.
    """

    #: A filter on training data: ``privet predict`` still predicts every input.
    applies_at_inference = False

    @attrs.define(frozen=True)
    class Options:
        languages: list[str] = attrs.field(validator=_nonempty)
        field: str = "text"
        min_confidence: float = attrs.field(default=0.0, validator=attrs.validators.and_(
            attrs.validators.ge(0.0), attrs.validators.le(1.0)))
        #: Also store the detected language code in this field (``null``: do not).
        store_as: Optional[str] = None

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._identifier: Any = None
        self._allowed = {code.lower() for code in self.options.languages}
        self._dropped: Counter[str] = Counter()

    def detect(self, text: str) -> tuple[str, float]:
        """``(language code, confidence)`` of ``text``."""
        if self._identifier is None:
            # imported lazily: loading the model takes about half a second
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        lang, prob = self._identifier.classify(text)
        return str(lang), float(prob)

    def clean(self, record: Record) -> Record | None:
        o = self.options
        lang, prob = self.detect(field_text(record, o.field))
        if lang not in self._allowed:
            self._dropped[lang] += 1
            raise DropRecord("wrong_language", f"detected {lang!r} ({prob:.2f})", bad=False)
        if prob < o.min_confidence:
            self._dropped["uncertain"] += 1
            raise DropRecord("uncertain_language", f"{lang!r} at {prob:.2f} < {o.min_confidence}",
                             bad=False)
        if o.store_as:
            record[o.store_as] = lang
        return record

    def report(self) -> dict[str, int]:
        return {f"dropped_{lang}": n for lang, n in sorted(self._dropped.items())}


# --- text.pos_tag ------------------------------------------------------------------------

#: spaCy components whose output is a part-of-speech tag (token.tag_ or token.pos_).
_TAG_ATTRS = ("token.tag", "token.pos")


def _spacy_pipeline_named(_instance: Any, attribute: Any, value: str) -> None:
    """Refuse, at config time, a pipeline that cannot load: one line saying what to install."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("spacy") is None:
        raise OptionValueError("text.pos_tag needs spaCy, which is not installed; "
                               "pip install 'privet-text[spacy]'", attribute.name)
    if Path(value).expanduser().is_dir():
        return
    if not re.fullmatch(r"[A-Za-z_][\w.]*", value) or importlib.util.find_spec(value) is None:
        raise OptionValueError(
            f"spaCy pipeline {value!r} is neither an installed package nor a folder; install a "
            f"pipeline with a tagger (pip install en_core_web_sm from your package mirror; "
            f"Privet downloads nothing) or name a folder saved by nlp.to_disk()", attribute.name)


def load_spacy_tagger(name: str) -> Any:
    """``spacy.load(name)`` (an installed package or a folder), checked to assign POS tags.

    Loading a package imports it, and a folder's config names the components to build:
    both are trusted like a plugin, since the pipeline file names them.
    """
    import spacy  # imported lazily: optional dependency, slow to import

    try:
        nlp = spacy.load(name, exclude=["parser", "ner", "lemmatizer", "senter", "textcat"])
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"cannot load spaCy pipeline {name!r}: {str(err).splitlines()[0]}") from err
    taggers = [pipe for pipe in nlp.pipe_names
               if any(a in _TAG_ATTRS for a in nlp.get_pipe_meta(pipe).assigns)]
    if not taggers:
        raise ConfigError(f"spaCy pipeline {name!r} has no tagger (components: "
                          f"{', '.join(nlp.pipe_names) or 'none'}); use a pipeline with a "
                          f"'tagger' or 'morphologizer', such as en_core_web_sm")
    return nlp


class PosTag(Cleaner):
    """Part-of-speech tags per token from a local spaCy pipeline with a tagger.

    Adds ``tokens_as`` (the token texts) and ``store_as`` (one tag per token) to each
    record; ``text.synonym`` and ``text.random_insertion`` then pick WordNet synonyms of
    the word's own part of speech. ``scheme: coarse`` stores universal tags (``NOUN``,
    ``VERB``; the fine tag where the pipeline sets no coarse one), ``fine`` the pipeline's
    own (``NN``, ``VBZ``). ``pipeline`` is an installed package (``en_core_web_sm``) or a
    folder saved by ``nlp.to_disk()``; nothing is downloaded. Tags only feed training-time
    augmentation, so ``privet predict`` skips this cleaner.
    """

    applies_at_inference = False

    @attrs.define(frozen=True)
    class Options:
        pipeline: str = attrs.field(validator=_spacy_pipeline_named)
        field: str = "text"
        store_as: str = "pos"
        tokens_as: str = "tokens"
        scheme: Literal["coarse", "fine"] = "coarse"
        #: Tag at most this many characters of a text (the rest gets no tags).
        max_chars: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        # loaded now, so a pipeline without a tagger fails before any data is read
        self._nlp: Any = load_spacy_tagger(self.options.pipeline)

    def tag(self, text: str) -> tuple[list[str], list[str]]:
        """``(tokens, tags)`` of ``text``, whitespace tokens left out."""
        if self._nlp is None:
            self._nlp = load_spacy_tagger(self.options.pipeline)
        coarse = self.options.scheme == "coarse"
        doc = self._nlp(text[: self.options.max_chars])
        tokens = [t for t in doc if not t.is_space]
        return [t.text for t in tokens], [(t.pos_ or t.tag_) if coarse else t.tag_ for t in tokens]

    def clean(self, record: Record) -> Record | None:
        o = self.options
        tokens, tags = self.tag(field_text(record, o.field))
        record[o.tokens_as] = tokens
        record[o.store_as] = tags
        return record

    def __getstate__(self) -> dict[str, Any]:  # worker processes load their own pipeline
        return {**self.__dict__, "_nlp": None}


__all__ = ["LanguageFilter", "LengthFilter", "Normalize", "PosTag", "StripHtml", "ascii_bytes",
           "load_spacy_tagger", "owners", "strip_html"]
