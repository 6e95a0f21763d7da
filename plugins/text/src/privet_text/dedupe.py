"""Deduplication: exact (hash of the normalized text) and near-duplicate (MinHash + LSH).

Both are deterministic: hashes are fixed functions of the text (never Python's salted
``hash``), MinHash bins and densification come from a seed, and the first record seen
wins. The seen-set lives in the cleaner instance, so it covers one run's preparation
(all splits, in the order the engine cleans them) and is never saved with the model.

``clean_batch`` does the per-record work of a whole batch in numpy (canonical form,
shingle hashes, signatures, LSH band keys), then looks all band keys up in, and adds
them to, a numpy hash table in one pass: a record none of whose keys was seen before,
in earlier batches or elsewhere in this one, is new and needs nothing more; only the
rest (duplicates, and records sharing a band by chance) are compared on their
signatures, those sharing a band within the batch one by one in source order. The
outcome is the one of checking record by record, whatever the batch size.

Signatures are compared on the low 16 bits of each entry (b-bit minwise hashing, Li and
König 2010): two different 32-bit values agree there with probability 2^-16, which moves
a Jaccard estimate by under 2e-5, and it halves the seen-set. Band keys are made from the
full 32-bit entries.

Memory per record seen: 16 bytes for ``exact`` (kept records only); for ``minhash`` the
signature (``2 * num_perm`` bytes), a fingerprint and an 8-byte slot per band key in a
table a quarter to a half full: with 128 permutations 390-520 bytes at threshold 0.9 (8
bands) and 520-780 at 0.8 (16 bands), so 0.4-0.8 GB for a million records kept.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterator, Literal

import attrs
import numpy as np
from privet import Cleaner, DropRecord, Record

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MASK32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint64(1 << 32)  # a bin no shingle fell into
#: Keys left in a probing loop below which plain Python beats another numpy round.
_FEW = 32
#: Signature rows per block of the seen-set.
_BLOCK = 1 << 16
#: Entries moved at a time when the band index grows.
_GROW_CHUNK = 1 << 20
#: Characters hashed in one go: a batch of long texts is done in parts, so its numpy
#: arrays (a few times 8 bytes a character) stay near 100 MB at most.
_CHARS_AT_ONCE = 1 << 22

#: ASCII characters that ``_NON_WORD`` matches (all but letters and digits) -> space.
_ASCII_NON_WORD = {c: " " for c in range(128) if not chr(c).isalnum()}
#: Separates the texts of a batch while it is canonicalised as one string: kept as it is.
_SEP = "\x00"
_ASCII_NON_WORD_BUT_SEP = {c: v for c, v in _ASCII_NON_WORD.items() if c != ord(_SEP)}
_NON_WORD_BUT_SEP = re.compile(r"(?:[^\w\x00]|_)+", re.UNICODE)
#: Whitespace ``" ".join(text.split())`` would change (``\s`` is ``str.isspace``, as split's).
_UNCOLLAPSED = re.compile(r"[^\S ]|  |^ | $| \x00|\x00 ")


def canonical(text: str, *, punctuation: bool) -> str:
    """Lower-cased, whitespace-collapsed text; without punctuation unless ``punctuation``."""
    text = text.lower()
    if not punctuation:
        # ASCII text: one table lookup per character, far cheaper than a regex substitution
        text = text.translate(_ASCII_NON_WORD) if text.isascii() else _NON_WORD.sub(" ", text)
    return " ".join(text.split())


def canonical_batch(texts: list[str], *, punctuation: bool) -> list[str]:
    """``[canonical(t) for t in texts]``, computed on the batch joined into one string.

    Each step (``lower``, punctuation removal, whitespace collapsing) then runs once in C
    instead of once per text. The separator is a NUL character, which ``lower`` leaves
    alone and which ends a word for the final-sigma rule as a text's end does; a batch
    whose texts hold NUL themselves is done text by text.
    """
    joined = _SEP.join(texts).lower()
    if joined.count(_SEP) != len(texts) - 1:
        return [canonical(t, punctuation=punctuation) for t in texts]
    if not punctuation:
        joined = (joined.translate(_ASCII_NON_WORD_BUT_SEP) if joined.isascii()
                  else _NON_WORD_BUT_SEP.sub(" ", joined))
    if _UNCOLLAPSED.search(joined):  # words joined by single spaces, none next to a separator
        joined = " ".join(joined.split()).replace(" " + _SEP, _SEP).replace(_SEP + " ", _SEP)
    return joined.split(_SEP) if texts else []


def _ascii_table(punctuation: bool) -> np.ndarray:
    """Byte -> byte of the canonical form: lower case; whitespace (and, without
    ``punctuation``, every non-alphanumeric character) -> space; NUL, the separator, kept."""
    table = np.zeros(256, dtype=np.uint8)
    for c in range(1, 128):
        ch = chr(c)
        keep = ch.isalnum() or (punctuation and not ch.isspace())
        table[c] = ord(ch.lower()) if keep else 32
    return table


_ASCII_TABLES = {False: _ascii_table(False), True: _ascii_table(True)}


def _collapse_spaces(chars: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` NUL-separated byte texts -> the bytes of each with its runs of spaces
    between words cut to one space and the others removed, end to end, and the lengths."""
    space = chars == 32
    word = ~space & (chars != 0)
    edge = np.diff(space.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    first, after = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # runs of spaces
    keep = word.copy()
    padded = np.append(word, False)
    between = (first > 0) & padded[first - 1] & padded[after]  # a word on either side
    keep[first[between]] = True
    # kept bytes per text: sums over [start, next separator]; a separator itself counts 0
    starts = np.concatenate([[0], np.flatnonzero(chars == 0) + 1])
    lengths = np.add.reduceat(np.append(keep, False).view(np.uint8), starts, dtype=np.int64)
    return chars[keep].astype(np.uint32), lengths


def canonical_codes(texts: list[str], *, punctuation: bool) -> tuple[np.ndarray, np.ndarray]:
    """The code points of ``canonical(t)`` for every text, end to end, and their lengths.

    An ASCII batch is canonicalised as bytes in numpy (a table look-up, then a mask that
    keeps one space between words); other batches go through :func:`canonical_batch`.
    """
    joined = _SEP.join(texts)
    if texts and joined.isascii() and joined.count(_SEP) == len(texts) - 1:
        chars = _ASCII_TABLES[punctuation][np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]
        return _collapse_spaces(chars, len(texts))
    canon = canonical_batch(texts, punctuation=punctuation)
    lengths = np.fromiter(map(len, canon), dtype=np.int64, count=len(canon))
    return np.frombuffer("".join(canon).encode("utf-32-le", "surrogatepass"), dtype=np.uint32), lengths


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
    bin keeps its minimum (one hash per shingle instead of ``num_perm``). An empty bin
    borrows, mixed with its distance, the value of the nearest non-empty bin to its left
    (densification by rotation, Shrivastava and Li, ICML 2014), so the share of equal
    entries of two signatures estimates the Jaccard similarity of their shingle sets, as
    in classic MinHash. Neighbouring bins are then alike: LSH bands take scattered bins.
    """

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> None:
        if num_perm & (num_perm - 1):
            raise ValueError("num_perm must be a power of two")
        self.num_perm = num_perm
        self.shingle = shingle
        self.seed = np.uint64(seed)
        self._bin_shift = np.uint64(64 - num_perm.bit_length() + 1)
        self.powers = [np.uint64(pow(1_000_003, shingle - 1 - k, 2**64)) for k in range(shingle)]

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32 signatures; a row depends only on its own text."""
        return self.sketch(texts)[0]

    def sketch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Signatures and a 64-bit fingerprint (shingles in order, length) of each text."""
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return self.sketch_codes(codes, lengths)

    def sketch_codes(self, codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sketch` of texts given as their code points end to end and their lengths."""
        if not len(lengths):
            return np.empty((0, self.num_perm), dtype=np.uint32), np.empty(0, dtype=np.uint64)
        hashes, owner, counts = self._shingle_hashes(codes, lengths)
        sig = np.full(len(lengths) * self.num_perm, _EMPTY, dtype=np.uint64)
        slots = owner * np.uint64(self.num_perm) + (hashes >> self._bin_shift)
        np.minimum.at(sig, slots.astype(np.intp), hashes & _MASK32)
        sig = self._densify(sig.reshape(len(lengths), self.num_perm))
        return sig, self._fingerprints(hashes, counts, lengths)

    def _shingle_hashes(self, codes: np.ndarray,
                        lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mixed hashes of every ``shingle``-gram of every text, the text each belongs to,
        and the number per text (a text shorter than a shingle is padded with NULs)."""
        n = self.shingle
        if lengths.min() < n:  # rare: place each text in a slot at least n long
            padded = np.maximum(lengths, n)
            starts = np.repeat(np.cumsum(padded) - padded - (np.cumsum(lengths) - lengths), lengths)
            out = np.zeros(int(padded.sum()), dtype=np.uint32)
            out[np.arange(len(codes)) + starts] = codes
            codes, lengths = out, padded
        cps = codes.astype(np.uint64)
        last = len(cps) - n + 1
        with np.errstate(over="ignore"):  # every window of the joined texts, by slices
            hashes = cps[:last] * self.powers[0]
            for j in range(1, n):
                hashes += cps[j:last + j] * self.powers[j]
        if len(lengths) > 1 and n > 1:  # drop the windows that straddle two texts
            valid = np.ones(last, dtype=bool)
            valid[(np.cumsum(lengths)[:-1, None] - np.arange(1, n)).ravel()] = False
            hashes = hashes[valid]
        counts = lengths - n + 1
        owner = np.repeat(np.arange(len(lengths), dtype=np.uint64), counts)
        return _mix(hashes ^ self.seed), owner, counts

    def _densify(self, sig: np.ndarray) -> np.ndarray:
        """Each empty bin takes the value of the nearest full bin to its left (circularly)
        plus its distance times an odd constant, so that a borrowed value does not equal
        the bin it came from. Arithmetic instead of ``np.where``: cheaper on (512, 128)."""
        rows, k = sig.shape
        pos = np.arange(1, k + 1, dtype=np.int32)
        prv = np.maximum.accumulate((sig != _EMPTY) * pos, axis=1) - 1  # -1: none yet
        prv += (prv < 0) * (prv[:, -1:] + 1 - k)  # before a row's first full bin: wrap
        source = (prv & (k - 1)) + (np.arange(rows, dtype=np.int32) * k)[:, None]
        values = sig.astype(np.uint32).ravel()[source.ravel()].reshape(rows, k)
        with np.errstate(over="ignore"):
            return values + (pos - 1 - prv).astype(np.uint32) * np.uint32(0x9E3779B1)

    def _fingerprints(self, hashes: np.ndarray, counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The sum of the shingle hashes, each times an odd factor from its position, and
        the text's length: equal for equal texts; with an equal signature, it tells a
        copy from a near copy (a different order of the same shingles included)."""
        starts = np.cumsum(counts) - counts
        with np.errstate(over="ignore"):
            odd = np.arange(1, 2 * len(hashes), 2, dtype=np.uint64)  # 2 * position + 1,
            odd -= np.repeat(2 * starts, counts).astype(np.uint64)  # counted per text
            sums = np.add.reduceat(hashes * odd, starts)
            return sums ^ _mix(lengths.astype(np.uint64) + self.seed)


class _BandIndex:
    """A multimap from LSH band keys to kept-record numbers, in one numpy array.

    Open addressing with linear probing, at most half full (grown by doubling). A key is cut to a 32-bit
    tag (its low bits, made odd so that 0 marks an empty slot); the tag's top bits pick
    the first slot, and a slot holds the tag above the record number. Two keys with one
    tag only make a spurious candidate, which the signature comparison then rejects.
    Look-ups and inserts take a whole batch of keys and probe for all of them at once:
    8 bytes a slot, 16 to 32 an entry, where a Python dict needs about 100.
    """

    def __init__(self, capacity: int = 1 << 18) -> None:
        self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        self.table = np.zeros(capacity, dtype=np.uint64)
        self.size = 0
        self._shift = np.uint64(33 - capacity.bit_length())

    @staticmethod
    def _tags(keys: np.ndarray) -> np.ndarray:
        return (keys | np.uint64(1)) & _MASK32

    def find_and_add(self, keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Add each key with its id (all ``ids`` above those already held) in one probing
        pass; return what a look-up before would have found, as (position in ``keys``,
        id) pairs, whether each key's tag is another key's too, and each key's slot."""
        if 2 * (self.size + len(keys)) > len(self.table):
            self._grow(self.size + len(keys))
        self.size += len(keys)
        mask, newest = len(self.table) - 1, np.uint64(ids.min())
        # probe in slot order (the tag's top bits): neighbouring reads and writes are cheaper
        ordered = np.sort((self._tags(keys) << np.uint64(32)) | np.arange(len(keys), dtype=np.uint64))
        query, tag = (ordered & _MASK32).astype(np.intp), ordered >> np.uint64(32)
        twin = tag[1:] == tag[:-1]
        shared = np.zeros(len(keys), dtype=bool)
        shared[query[1:][twin]] = shared[query[:-1][twin]] = True
        entry = (tag << np.uint64(32)) | ids[query].astype(np.uint64)
        slot = (tag >> self._shift).astype(np.intp)
        placed = np.empty(len(keys), dtype=np.intp)
        at: list[np.ndarray] = []
        found: list[np.ndarray] = []
        while len(query) > _FEW:
            held = self.table[slot]
            hit = ((held >> np.uint64(32)) == tag) & ((held & _MASK32) < newest)  # not dead
            if hit.any():
                at.append(query[hit])
                found.append((held[hit] & _MASK32).astype(np.int64))
            # a key's entries all lie before the first empty slot: there it goes, unless a
            # key before it (they are sorted) takes the slot; then it sees it taken next round
            free = held == 0
            won = free & np.concatenate([[True], slot[1:] != slot[:-1]])
            self.table[slot[won]] = entry[won]
            placed[query[won]] = slot[won]
            left = ~won
            wrapped = bool(np.any(~free & (slot == mask)))  # these go on at slot 0
            slot = np.where(free, slot, (slot + 1) & mask)[left]
            query, tag, entry = query[left], tag[left], entry[left]
            if wrapped:
                order = np.argsort(slot, kind="stable")
                slot, query, tag, entry = slot[order], query[order], tag[order], entry[order]
        self._finish(query, slot, entry, int(newest), at, found, placed)
        if not at:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.int64), shared, placed
        return np.concatenate(at), np.concatenate(found), shared, placed

    def _finish(self, query: np.ndarray, slot: np.ndarray, entry: np.ndarray, newest: int,
                at: list[np.ndarray], found: list[np.ndarray], placed: np.ndarray) -> None:
        """:meth:`find_and_add` for the last few keys, one at a time: cheaper than more
        numpy rounds."""
        table, mask = self.table, len(self.table) - 1
        hits: list[tuple[int, int]] = []
        for q, i, value in zip(query.tolist(), slot.tolist(), entry.tolist()):
            want = value >> 32
            held = int(table[i])
            while held:
                if held >> 32 == want and held & 0xFFFFFFFF < newest:
                    hits.append((q, held & 0xFFFFFFFF))
                i = (i + 1) & mask
                held = int(table[i])
            table[i], placed[q] = value, i
        if hits:
            at.append(np.array([q for q, _ in hits], dtype=np.intp))
            found.append(np.array([i for _, i in hits], dtype=np.int64))

    def mark_dead(self, slots: np.ndarray) -> None:
        """Entries of dropped records: kept as tags, so that probe runs stay unbroken."""
        self.table[slots] |= _MASK32  # id 0xFFFFFFFF: above every live id

    def _insert(self, entry: np.ndarray) -> None:
        """Add entries (tag above id) sorted by tag, so in slot order: neighbouring writes."""
        self.size += len(entry)
        mask = len(self.table) - 1
        slot = ((entry >> np.uint64(32)) >> self._shift).astype(np.intp)
        while len(entry) > _FEW:
            free = self.table[slot] == 0
            # entries at one slot are neighbours: the first of them takes the slot if free
            won = free & np.concatenate([[True], slot[1:] != slot[:-1]])
            self.table[slot[won]] = entry[won]
            # the others move on; one that lost a free slot sees it taken next round
            left = ~won
            wrapped = bool(np.any(~free & (slot == mask)))  # these go on at slot 0
            slot = np.where(free, slot, (slot + 1) & mask)[left]
            entry = entry[left]
            if wrapped:
                order = np.argsort(slot, kind="stable")
                slot, entry = slot[order], entry[order]
        table = self.table  # the last few, one at a time: cheaper than more numpy rounds
        for at, value in zip(slot.tolist(), entry.tolist()):
            while table[at]:
                at = (at + 1) & mask
            table[at] = value

    def _grow(self, need: int) -> None:
        capacity = len(self.table)
        while 2 * need > capacity:
            capacity *= 2
        if capacity > 1 << 32:
            raise MemoryError("text.dedupe: over a billion band keys; deduplicate in parts")
        held = self.table[(self.table != 0) & ((self.table & _MASK32) != _MASK32)]  # live ones
        self.table = held[:0]  # the old table goes before the new one is made: a lower peak
        self._resize(capacity)
        held.sort()  # in place: by tag, so in slot order
        for lo in range(0, len(held), _GROW_CHUNK):  # a few MB of temporaries at a time
            self._insert(held[lo:lo + _GROW_CHUNK])

class _Seen:
    """Signatures, fingerprints and the LSH band index of the records seen; first seen wins.

    A batch is added whole, in the same pass that looks its band keys up; the entries
    of the records it then drops are marked dead (their signature rows stay unused).
    Signatures are kept in blocks of ``_BLOCK`` rows: growing never copies them, so the
    peak stays at what is held (a doubling array would need old and new at once).
    """

    def __init__(self, num_perm: int) -> None:
        self.num_perm = num_perm
        self.blocks: list[np.ndarray] = []
        self.fps = np.empty(1024, dtype=np.uint64)
        self.size = 0
        self.index = _BandIndex()

    def _append(self, sigs: np.ndarray, fps: np.ndarray) -> np.ndarray:
        need = self.size + len(sigs)
        if need > len(self.fps):  # 8 bytes a record: doubling is cheap here
            grown = np.empty(max(need, 2 * len(self.fps)), dtype=np.uint64)
            grown[:self.size] = self.fps[:self.size]
            self.fps = grown
        self.fps[self.size:need] = fps
        done = 0
        while done < len(sigs):
            block, row = divmod(self.size + done, _BLOCK)
            if block == len(self.blocks):
                self.blocks.append(np.empty((_BLOCK, self.num_perm), dtype=sigs.dtype))
            n = min(len(sigs) - done, _BLOCK - row)
            self.blocks[block][row:row + n] = sigs[done:done + n]
            done += n
        ids, self.size = np.arange(self.size, need), need
        return ids

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The signatures of records ``ids`` (a copy, in that order)."""
        which, row = np.divmod(ids, _BLOCK)
        if len(self.blocks) == 1:
            return self.blocks[0][row]
        out = np.empty((len(ids), self.num_perm), dtype=self.blocks[0].dtype)
        for b in np.unique(which).tolist():
            at = which == b
            out[at] = self.blocks[b][row[at]]
        return out

    def add(self, sigs: np.ndarray, fps: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per record: the most equal signature entries with an earlier record it shares a
        band with (0 if none), whether one of those is an exact copy, whether it shares a
        band with another record of the batch, and the slots of its band keys."""
        ids = self._append(sigs, fps)
        at, found, shared, placed = self.index.find_and_add(keys.ravel(), np.repeat(ids, keys.shape[1]))
        equal = np.zeros(len(sigs), dtype=np.int64)
        copy = np.zeros(len(sigs), dtype=bool)
        if len(at):
            pairs = np.unique((at // keys.shape[1]) * self.size + found)
            rec, found = np.divmod(pairs, self.size)
            same = np.count_nonzero(sigs[rec] == self.rows(found), axis=1)
            np.maximum.at(equal, rec, same)
            copy[rec[(same == sigs.shape[1]) & (fps[rec] == self.fps[found])]] = True
        return equal, copy, shared.reshape(keys.shape).any(axis=1), placed.reshape(keys.shape)


def _parts(texts: list[str], limit: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive runs of ``texts`` of at most ``limit`` characters
    (or one text, if longer)."""
    if sum(map(len, texts)) <= limit:  # the common case
        yield 0, len(texts)
        return
    start, size = 0, 0
    for i, text in enumerate(texts):
        if size and size + len(text) > limit:
            yield start, i
            start, size = i, 0
        size += len(text)
    if start < len(texts):
        yield start, len(texts)


def _verdict(equal: int, copy: bool, num_perm: int, threshold: float) -> DropRecord | None:
    """The drop for a record whose closest earlier kept record has ``equal`` equal entries."""
    if copy:
        return DropRecord("duplicate", bad=False)
    if equal / num_perm >= threshold:
        return DropRecord("near_duplicate", f"estimated Jaccard {equal / num_perm:.2f}", bad=False)
    return None


class Dedupe(Cleaner):
    """Drop exact or near-duplicate texts; the first occurrence is kept.

    ``method: exact`` compares a hash of the text after lower-casing and collapsing
    whitespace (and removing punctuation unless ``keep_punctuation``). ``method: minhash``
    drops a text whose estimated Jaccard similarity of character ``shingle``-grams with
    an earlier text reaches ``threshold``, found through locality-sensitive hashing.
    """

    #: ``privet predict`` gives every input a prediction, repeated or not.
    applies_at_inference = False
    #: Records are compared with the ones before them: one process, source order.
    per_record = False

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
            # a band's rows are bins scattered over the signature: neighbouring bins are
            # alike after densification, and a band of them would collide too often
            self._band_order = np.random.default_rng(o.seed).permutation(o.num_perm)
        self.start_pass()

    def start_pass(self) -> None:
        """Forget what was seen: each pass over the data deduplicates from scratch."""
        self._exact: set[bytes] = set()
        if self.options.method == "minhash":
            self._seen = _Seen(self.options.num_perm)

    def clean(self, record: Record) -> Record | None:
        """A batch of one: the same outcome, but about 20x the cost per record of a batch
        of 512 (numpy's per-call overhead); the engine calls :meth:`clean_batch`."""
        out = self.clean_batch([record])[0]
        if isinstance(out, DropRecord):
            raise out
        return out

    def clean_batch(self, records: list[Record],
                    digests: list[Any] | None = None) -> list[Record | None | DropRecord]:
        """The batch's texts canonicalised and hashed at once; then the first-seen-wins
        checks, as if one record at a time in order (earlier records of the batch count).
        ``digests``: :meth:`digest_batch` of ``records``, computed in a worker process."""
        out: list[Record | None | DropRecord] = list(records)
        if digests is None:
            digests = self.digest_batch(records)
        where = [i for i, d in enumerate(digests) if d is not None]
        for i in set(range(len(records))) - set(where):
            out[i] = DropRecord("missing_text", f"field {self.options.field!r}")
        present = [digests[i] for i in where]
        if self.options.method == "minhash":
            drops = self._near_batch(*self._unpack(present)) if present else {}
        else:
            drops = self._exact_batch(present)
        for i, drop in drops.items():
            out[where[i]] = drop
            self._counts["exact_duplicates" if drop.reason == "duplicate" else "near_duplicates"] += 1
        return out

    def digest_batch(self, records: list[Record]) -> list[Any]:
        """What each record alone decides, computed in the preparation workers: a 16-byte
        hash of the canonical text (``exact``), or its signature (the low 16 bits of each
        entry), fingerprint and band keys end to end (``minhash``). ``None`` for a record
        without a text."""
        o = self.options
        texts = [record.get(o.field) for record in records]
        out: list[Any] = [None] * len(records)
        where = [i for i, text in enumerate(texts) if isinstance(text, str)]
        texts = [texts[i] for i in where]
        if o.method == "exact":
            for i, text in zip(where, canonical_batch(texts, punctuation=o.keep_punctuation)):
                out[i] = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            return out
        for lo, hi in _parts(texts, _CHARS_AT_ONCE):  # long texts: bounded numpy arrays
            sigs, fps = self._hasher.sketch_codes(*canonical_codes(texts[lo:hi], punctuation=o.keep_punctuation))
            keys = self._band_keys(sigs)
            rows = np.concatenate([sigs.astype(np.uint16).view(np.uint8), fps.view(np.uint8).reshape(-1, 8),
                                   keys.view(np.uint8)], axis=1)
            for i, row in zip(where[lo:hi], rows):
                out[i] = row.tobytes()
        return out

    def _unpack(self, digests: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signatures, fingerprints and band keys from :meth:`digest_batch`'s rows."""
        k = self.options.num_perm
        rows = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), -1)
        sigs = np.ascontiguousarray(rows[:, :2 * k]).view(np.uint16)
        fps = np.ascontiguousarray(rows[:, 2 * k:2 * k + 8]).view(np.uint64).ravel()
        keys = np.ascontiguousarray(rows[:, 2 * k + 8:]).view(np.uint64)
        return sigs, fps, keys

    def _exact_batch(self, digests: list[bytes]) -> dict[int, DropRecord]:
        drops: dict[int, DropRecord] = {}
        for i, digest in enumerate(digests):
            if digest in self._exact:
                drops[i] = DropRecord("duplicate", bad=False)
            else:
                self._exact.add(digest)
        return drops

    def _near_batch(self, sigs: np.ndarray, fps: np.ndarray, keys: np.ndarray) -> dict[int, DropRecord]:
        """Compared with the kept records of earlier batches all at once; then the
        records of this batch that share a band with another of it, one by one in order."""
        drops: dict[int, DropRecord] = {}
        k, threshold = self.options.num_perm, self.options.threshold
        equal, copy, clash, placed = self._seen.add(sigs, fps, keys)
        near = equal / k >= threshold
        for i in np.flatnonzero(near).tolist():
            drops[i] = _verdict(int(equal[i]), bool(copy[i]), k, threshold)  # type: ignore[assignment]
        self._within_batch(np.flatnonzero(~near), clash[~near], sigs, fps, keys, drops)
        if drops:
            self._seen.index.mark_dead(placed[list(drops)].ravel())
        return dict(sorted(drops.items()))

    def _within_batch(self, rest: np.ndarray, clash: np.ndarray, sigs: np.ndarray, fps: np.ndarray,
                      keys: np.ndarray, drops: dict[int, DropRecord]) -> None:
        """Of the records ``rest`` (no earlier batch holds their like), drop those like an
        earlier kept record of this batch sharing a band with them (only those that
        ``clash``, sharing a band with another record of the batch, can be)."""
        local: dict[int, list[int]] = {}  # band key -> kept records of this batch
        k, threshold = self.options.num_perm, self.options.threshold
        for i in rest[clash].tolist():
            band_keys = keys[i].tolist()
            found = {j for key in band_keys for j in local.get(key, ())}
            if found:
                near = np.fromiter(found, dtype=np.intp, count=len(found))
                same = np.count_nonzero(sigs[near] == sigs[i], axis=1)
                exact = bool(np.any((same == k) & (fps[near] == fps[i])))
                drop = _verdict(int(same.max()), exact, k, threshold)
                if drop is not None:
                    drops[i] = drop
                    continue
            for key in band_keys:
                local.setdefault(key, []).append(i)

    def _band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """One odd uint64 key per band and record: a polynomial of the band's rows (two
        32-bit rows at a time where the band has an even number), mixed once with the band
        number. Odd: 0 marks an empty slot of the band index."""
        rows = self._rows
        values = np.take(sigs, self._band_order, axis=1)  # a C-ordered copy
        if rows % 2 == 0:
            values, rows = values.view(np.uint64), rows // 2
        bands = values.astype(np.uint64, copy=False).reshape(len(sigs), self._bands, rows)
        with np.errstate(over="ignore"):
            key = bands[:, :, 0] * np.uint64(0x9E3779B97F4A7C15)
            for r in range(1, rows):
                key = (key + bands[:, :, r]) * np.uint64(0xD6E8FEB86659FD93)
            key = _mix(key ^ (np.arange(self._bands, dtype=np.uint64) << np.uint64(40)))
        return key | np.uint64(1)

    def report(self) -> dict[str, int]:
        return dict(self._counts)


__all__ = ["Dedupe", "MinHasher", "canonical", "canonical_batch", "canonical_codes", "lsh_params"]
