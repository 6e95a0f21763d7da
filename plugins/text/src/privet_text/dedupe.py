"""Deduplication: exact (hash of the normalized text) and near-duplicate (MinHash + LSH).

Both are deterministic: hashes are fixed functions of the text (never Python's salted
``hash``), MinHash permutations come from a seeded generator, and the first record seen
wins. The seen-set lives in the cleaner instance, so it covers one run's preparation
(all splits, in the order the engine cleans them) and is never saved with the model.
Memory: 16 bytes per kept record for ``exact``; ``4 * num_perm`` bytes for ``minhash``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import attrs
import numpy as np
from privet import Cleaner, DropRecord, Record

from .cleaners import field_text

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MASK32 = np.uint64(0xFFFFFFFF)


def canonical(text: str, *, punctuation: bool) -> str:
    """Lower-cased, whitespace-collapsed text; without punctuation unless ``punctuation``."""
    text = text.lower()
    if not punctuation:
        text = _NON_WORD.sub(" ", text)
    return " ".join(text.split())


def _area(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def lsh_params(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows), bands * rows == num_perm, minimising the weighted areas of false
    candidates below the threshold and missed pairs above it. Missed pairs weigh 3x:
    candidates are verified on their signatures, so a false candidate costs only time."""
    s = np.linspace(0.0, 1.0, 201)
    below, above = s <= threshold, s >= threshold
    best = None
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        p = 1.0 - (1.0 - s**rows) ** bands  # probability that a pair becomes a candidate
        error = 0.25 * _area(p[below], s[below]) + 0.75 * _area(1.0 - p[above], s[above])
        if best is None or error < best[0]:
            best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


class MinHasher:
    """MinHash signatures of character shingles, vectorized with numpy.

    A shingle's hash is a polynomial rolling hash of its code points (uint64, wrapping);
    permutation ``i`` maps a hash ``x`` to ``(a_i * x + b_i) >> 32`` (multiply-shift).
    """

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1))[:, None]
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)[:, None]
        self.shingle = shingle
        self.powers = np.array([pow(1_000_003, shingle - 1 - k, 2**64) for k in range(shingle)],
                               dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = self.shingle
        if len(cps) < n:
            cps = np.concatenate([cps, np.zeros(n - len(cps), dtype=np.uint64)])
        windows = np.lib.stride_tricks.sliding_window_view(cps, n)
        with np.errstate(over="ignore"):
            hashes = np.unique((windows * self.powers).sum(axis=1, dtype=np.uint64))
            permuted = (self.a * hashes[None, :] + self.b) >> np.uint64(32)
        return (permuted & _MASK32).min(axis=1).astype(np.uint32)


class Dedupe(Cleaner):
    """Drop exact or near-duplicate texts; the first occurrence is kept.

    ``method: exact`` compares a hash of the text after lower-casing and collapsing
    whitespace (and removing punctuation unless ``keep_punctuation``). ``method: minhash``
    drops a text whose estimated Jaccard similarity of character ``shingle``-grams with
    an earlier text reaches ``threshold``, found through locality-sensitive hashing.
    """

    #: ``privet predict`` gives every input a prediction, repeated or not.
    applies_at_inference = False

    @attrs.define(frozen=True)
    class Options:
        field: str = "text"
        method: Literal["exact", "minhash"] = "exact"
        keep_punctuation: bool = False
        threshold: float = attrs.field(default=0.8, validator=attrs.validators.and_(
            attrs.validators.gt(0.0), attrs.validators.le(1.0)))
        num_perm: int = attrs.field(default=128, validator=attrs.validators.in_([16, 32, 64, 128, 256]))
        shingle: int = attrs.field(default=5, validator=attrs.validators.ge(1))
        seed: int = 1

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        self._counts = {"exact_duplicates": 0, "near_duplicates": 0}
        if o.method == "minhash":
            self._hasher = MinHasher(o.num_perm, o.shingle, o.seed)
            self._bands, self._rows = lsh_params(o.num_perm, o.threshold)
        self.start_pass()

    def start_pass(self) -> None:
        """Forget what was seen: each pass over the data deduplicates from scratch."""
        self._exact: set[bytes] = set()
        if self.options.method == "minhash":
            self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self._bands)]
            self._signatures: list[np.ndarray] = []

    def clean(self, record: Record) -> Record | None:
        o = self.options
        text = canonical(field_text(record, o.field), punctuation=o.keep_punctuation)
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in self._exact:
            self._counts["exact_duplicates"] += 1
            raise DropRecord("duplicate", bad=False)
        if o.method == "minhash":
            self._near(text)
        self._exact.add(digest)
        return record

    def _near(self, text: str) -> None:
        sig = self._hasher.signature(text)
        keys = [sig[i * self._rows:(i + 1) * self._rows].tobytes() for i in range(self._bands)]
        seen: set[int] = set()
        for band, key in enumerate(keys):
            for idx in self._buckets[band].get(key, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                similarity = float(np.mean(self._signatures[idx] == sig))
                if similarity >= self.options.threshold:
                    self._counts["near_duplicates"] += 1
                    raise DropRecord("near_duplicate", f"estimated Jaccard {similarity:.2f}", bad=False)
        idx = len(self._signatures)
        self._signatures.append(sig)
        for band, key in enumerate(keys):
            self._buckets[band].setdefault(key, []).append(idx)

    def report(self) -> dict[str, int]:
        return dict(self._counts)


__all__ = ["Dedupe", "MinHasher", "canonical", "lsh_params"]
