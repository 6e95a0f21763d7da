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


#: ASCII characters that ``_NON_WORD`` matches (all but letters and digits) -> space.
_ASCII_NON_WORD = {c: " " for c in range(128) if not chr(c).isalnum()}


def canonical(text: str, *, punctuation: bool) -> str:
    """Lower-cased, whitespace-collapsed text; without punctuation unless ``punctuation``."""
    text = text.lower()
    if not punctuation:
        # ASCII text: one table lookup per character, far cheaper than a regex substitution
        text = text.translate(_ASCII_NON_WORD) if text.isascii() else _NON_WORD.sub(" ", text)
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


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every output bit depends on every input bit (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class MinHasher:
    """One-permutation MinHash signatures of character shingles, a batch at a time in numpy.

    A shingle's hash is a polynomial rolling hash of its code points, mixed with the seed;
    its top bits pick one of ``num_perm`` bins and its low 32 bits are the value, and each
    bin keeps its minimum (one hash per shingle instead of ``num_perm``). Empty bins
    borrow the value of a non-empty bin along a fixed, seeded probe sequence (optimal
    densification, Shrivastava 2017), so the share of equal entries of two signatures
    estimates the Jaccard similarity of their shingle sets, as in classic MinHash.
    """

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> None:
        if num_perm & (num_perm - 1):
            raise ValueError("num_perm must be a power of two")
        self.num_perm = num_perm
        self.shingle = shingle
        self.seed = np.uint64(seed)
        self._bin_shift = np.uint64(64 - num_perm.bit_length() + 1)
        self.powers = np.array([pow(1_000_003, shingle - 1 - k, 2**64) for k in range(shingle)],
                               dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32 signatures; a row depends only on its own text."""
        n, k = self.shingle, self.num_perm
        padded = [t if len(t) >= n else t + "\0" * (n - len(t)) for t in texts]
        lengths = np.fromiter(map(len, padded), dtype=np.int64, count=len(padded))
        cps = np.frombuffer("".join(padded).encode("utf-32-le", "surrogatepass"),
                            dtype=np.uint32).astype(np.uint64)
        counts = lengths - n + 1  # windows per text
        starts = np.repeat(np.cumsum(lengths) - lengths, counts)
        starts += np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        owner = np.repeat(np.arange(len(texts), dtype=np.uint64), counts)
        with np.errstate(over="ignore"):
            hashes = cps[starts] * self.powers[0]
            for j in range(1, n):
                hashes += cps[starts + j] * self.powers[j]
            mixed = _mix(hashes ^ self.seed)
        slots = owner * np.uint64(k) + (mixed >> self._bin_shift)
        sig = np.full(len(texts) * k, 1 << 32, dtype=np.uint64)  # 2**32: an empty bin
        np.minimum.at(sig, slots.astype(np.intp), mixed & _MASK32)
        return self._densify(sig.reshape(len(texts), k)).astype(np.uint32)

    def _densify(self, sig: np.ndarray) -> np.ndarray:
        """Fill each empty bin ``j`` from the first non-empty bin of its probe sequence."""
        k = self.num_perm
        empty = sig == (1 << 32)
        rows, bins = np.nonzero(empty)
        attempt = np.uint64(0)
        while len(rows):
            key = (bins.astype(np.uint64) << np.uint64(32)) | attempt
            probe = (_mix(key ^ self.seed ^ np.uint64(0x9E3779B97F4A7C15)) % np.uint64(k)).astype(np.intp)
            value = sig[rows, probe]
            found = ~empty[rows, probe]
            sig[rows[found], bins[found]] = value[found]
            rows, bins = rows[~found], bins[~found]
            attempt += np.uint64(1)
        return sig


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
            # one dict for all bands: a band's key is salted with its number
            self._buckets: dict[int, int | list[int]] = {}
            self._signatures: list[np.ndarray] = []

    def clean(self, record: Record) -> Record | None:
        out = self.clean_batch([record])[0]
        if isinstance(out, DropRecord):
            raise out
        return out

    def clean_batch(self, records: list[Record]) -> list[Record | None | DropRecord]:
        """Canonical texts and MinHash signatures of the whole batch at once, then the
        first-seen-wins checks one record at a time, in order (earlier records of the same
        batch count as seen)."""
        o = self.options
        out: list[Record | None | DropRecord] = []
        texts: list[str] = []
        for record in records:
            try:
                texts.append(canonical(field_text(record, o.field), punctuation=o.keep_punctuation))
                out.append(record)
            except DropRecord as drop:
                out.append(drop)
        keys: list[list[int]] | None = None
        sigs: np.ndarray | None = None
        if o.method == "minhash" and texts:
            sigs = self._hasher.signatures(texts)
            keys = self._band_keys(sigs).tolist()
        j = 0
        for i, record in enumerate(out):
            if isinstance(record, DropRecord):
                continue
            out[i] = self._check(texts[j], None if sigs is None else sigs[j], keys[j] if keys else [])
            if out[i] is None:
                out[i] = record
            j += 1
        return out

    def _near(self, sig: np.ndarray, keys: list[int]) -> DropRecord | None:
        """The drop for a signature close enough to a candidate's, else None."""
        seen: set[int] = set()
        for key in keys:
            held = self._buckets.get(key, ())
            for idx in (held,) if isinstance(held, int) else held:
                if idx in seen:
                    continue
                seen.add(idx)
                similarity = np.count_nonzero(self._signatures[idx] == sig) / len(sig)
                if similarity >= self.options.threshold:
                    self._counts["near_duplicates"] += 1
                    return DropRecord("near_duplicate", f"estimated Jaccard {similarity:.2f}", bad=False)
        return None

    def _band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """One uint64 key per band and record, mixed from the band's rows and the band number."""
        bands = sigs.astype(np.uint64).reshape(len(sigs), self._bands, self._rows)
        with np.errstate(over="ignore"):
            key = np.zeros(bands.shape[:2], dtype=np.uint64)
            for r in range(self._rows):
                key = _mix(key ^ bands[:, :, r])
            return _mix(key ^ (np.arange(self._bands, dtype=np.uint64) << np.uint64(40)))

    def _check(self, text: str, sig: np.ndarray | None, keys: list[int]) -> DropRecord | None:
        """The drop for a text seen before (exactly or nearly), else None after remembering it."""
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._exact:
            self._counts["exact_duplicates"] += 1
            return DropRecord("duplicate", bad=False)
        if sig is not None:
            buckets = self._buckets
            idx = len(self._signatures)
            if buckets.keys().isdisjoint(keys):  # the common case: no candidate at all
                buckets.update(dict.fromkeys(keys, idx))
            else:
                drop = self._near(sig, keys)
                if drop is not None:
                    return drop
                for key in keys:  # a bucket holds one index (an int) or a list of them
                    held = buckets.get(key)
                    buckets[key] = idx if held is None else [held, idx] if isinstance(held, int) \
                        else held + [idx]
            self._signatures.append(sig)
        self._exact.add(digest)
        return None

    def report(self) -> dict[str, int]:
        return dict(self._counts)


__all__ = ["Dedupe", "MinHasher", "canonical", "lsh_params"]
