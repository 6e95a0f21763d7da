"""Synonym sources for the augmenters: a user thesaurus file, and the WordNet 3.0 database.

WordNet is read straight from its files (``index.POS`` and ``data.POS``, as Debian's
``wordnet-base`` installs them in /usr/share/wordnet): a lemma is found by binary search
in the sorted index, and each of its synsets by seeking to the byte offset the index
gives. Nothing is loaded into memory up front and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import IO, Protocol

from privet import ConfigError

WORDNET_POS = ("noun", "verb", "adj", "adv")
#: The part of speech of a tagged word WordNet does not cover (a determiner, a pronoun):
#: WordNet gives it no synonyms, a thesaurus file still does.
OTHER_POS = "other"
DEFAULT_WORDNET = Path("/usr/share/wordnet")


#: Universal (spaCy ``pos_``) and Penn Treebank (``tag_``) tags -> WordNet part of speech.
#: Auxiliaries, pronouns, determiners ... have no WordNet synonyms worth using: None.
_UPOS = {"NOUN": "noun", "PROPN": "noun", "VERB": "verb", "ADJ": "adj", "ADV": "adv"}
_PENN_PREFIX = (("NN", "noun"), ("VB", "verb"), ("JJ", "adj"), ("RB", "adv"))


def wordnet_pos(tag: str) -> str | None:
    """The WordNet part of speech (``noun``, ``verb``, ``adj``, ``adv``) of a POS tag, or
    None for tags WordNet has no synonyms for (``DET``, ``PRON``, ``AUX``, ``IN`` ...)."""
    if tag in _UPOS:
        return _UPOS[tag]
    for prefix, pos in _PENN_PREFIX:
        if tag.startswith(prefix) and tag[len(prefix):] in ("", "S", "P", "PS", "D", "G", "N", "Z", "R"):
            return pos
    return None


class SynonymSource(Protocol):
    def synonyms(self, word: str, pos: str | None = None) -> list[str]:
        """Synonyms of a lower-case word (without the word itself); empty if unknown.
        ``pos`` (a WordNet part of speech) restricts them where the source knows it."""
        ...


class Thesaurus:
    """Synonyms from a file: JSON ``{"word": ["syn", ...]}`` or TSV ``word<TAB>syn<TAB>syn``."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = {k.lower(): [s for s in v if s.lower() != k.lower()] for k, v in table.items()}

    @classmethod
    def load(cls, path: Path) -> Thesaurus:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read thesaurus {path}: {err}") from err
        if str(path).endswith(".json"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{err.lineno}: invalid JSON in thesaurus: {err.msg}") from err
            if not isinstance(data, dict) or not all(
                    isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()):
                raise ConfigError(f"{path}: a JSON thesaurus maps each word to a list of strings")
            return cls(data)
        table: dict[str, list[str]] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            cells = [c.strip() for c in line.split("\t") if c.strip()]
            if len(cells) < 2:
                raise ConfigError(f"{path}:{lineno}: a thesaurus line is word<TAB>synonym[<TAB>synonym...]")
            table.setdefault(cells[0], []).extend(cells[1:])
        return cls(table)

    def synonyms(self, word: str, pos: str | None = None) -> list[str]:
        """A thesaurus file has no parts of speech: ``pos`` is ignored."""
        return self.table.get(word, [])


class WordNet:
    """Synonyms from the WordNet 3.0 database files in ``path``."""

    def __init__(self, path: Path = DEFAULT_WORDNET) -> None:
        self.path = Path(path)
        missing = [f"{kind}.{pos}" for pos in WORDNET_POS for kind in ("index", "data")
                   if not (self.path / f"{kind}.{pos}").is_file()]
        if missing:
            raise ConfigError(
                f"WordNet data not found in {self.path} (missing {', '.join(missing)}); install "
                f"it (Debian/Ubuntu: apt-get install wordnet-base) or set wordnet_path")
        self._files: dict[str, IO[bytes]] = {}
        self._pid = os.getpid()
        self.synonyms = lru_cache(maxsize=65536)(self._synonyms)  # type: ignore[method-assign]

    def _open(self, name: str) -> IO[bytes]:
        if self._pid != os.getpid():
            # A forked DataLoader worker: an inherited file shares its offset with the parent
            # and siblings, so concurrent seeks would interleave. Open our own.
            self._files, self._pid = {}, os.getpid()
        fh = self._files.get(name)
        if fh is None:
            fh = self._files[name] = open(self.path / name, "rb")
        return fh

    def _index_line(self, pos: str, key: bytes) -> bytes | None:
        """The index line of lemma ``key`` by binary search over the sorted file."""
        fh = self._open(f"index.{pos}")
        lo, hi = 0, fh.seek(0, 2)
        while lo < hi:
            mid = (lo + hi) // 2
            if mid == 0:
                fh.seek(0)
            else:  # move to the first line that starts at or after mid
                fh.seek(mid - 1)
                fh.readline()
            start = fh.tell()
            line = fh.readline()
            if not line:
                hi = mid
                continue
            word = line.split(b" ", 1)[0]
            if line.startswith(b"  ") or word < key:  # licence header lines sort first
                lo = start + len(line)
            elif word == key:
                return line
            else:
                hi = mid
        return None

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        fh = self._open(f"data.{pos}")
        fh.seek(offset)
        fields = fh.readline().decode("utf-8", "replace").split(" ")
        count = int(fields[3], 16)
        words = fields[4: 4 + 2 * count: 2]
        return [w.split("(", 1)[0].replace("_", " ") for w in words]

    def _synonyms(self, word: str, pos: str | None = None) -> list[str]:
        if pos == OTHER_POS:
            return []
        if pos is not None and pos not in WORDNET_POS:
            raise ValueError(f"unknown WordNet part of speech {pos!r} (one of {WORDNET_POS})")
        key = word.lower().replace(" ", "_").encode("utf-8")
        found: dict[str, None] = {}
        for pos in WORDNET_POS if pos is None else (pos,):
            line = self._index_line(pos, key)
            if line is None:
                continue
            fields = line.split()
            synset_count, pointer_count = int(fields[2]), int(fields[3])
            offsets = fields[6 + pointer_count: 6 + pointer_count + synset_count]
            for offset in offsets:
                for synonym in self._synset_words(pos, int(offset)):
                    if synonym.lower() != word.lower():
                        found.setdefault(synonym, None)
        return list(found)

    def __getstate__(self) -> dict[str, object]:  # open files stay in the process that opened them
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class Combined:
    """Synonyms of several sources, in order, without repeats."""

    def __init__(self, sources: list[SynonymSource]) -> None:
        self.sources = sources

    def synonyms(self, word: str, pos: str | None = None) -> list[str]:
        out: dict[str, None] = {}
        for source in self.sources:
            for synonym in source.synonyms(word, pos):
                out.setdefault(synonym, None)
        return list(out)


__all__ = ["Combined", "DEFAULT_WORDNET", "OTHER_POS", "SynonymSource", "Thesaurus", "WordNet", "wordnet_pos"]
