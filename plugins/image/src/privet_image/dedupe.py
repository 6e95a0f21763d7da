"""``image.dedupe``: drop near-duplicate images found by a perceptual hash.

Duplicates inflate some classes and, worse, leak between training and validation:
the same photo in both splits makes validation accuracy a measure of memory. The
training split is hashed first (``fit``), so when a validation image looks like a
training image it is the validation copy that goes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import attrs

import privet
from privet import OptionValueError

from .tally import Tally


def _hash_size(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not 2 <= value <= 8:
        raise OptionValueError(f"{attribute.name} must be between 2 and 8 (a hash of at most "
                               f"64 bits), got {value}", attribute.name)


def _distance(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise OptionValueError(f"{attribute.name} must be 0 (identical hashes) or more, "
                               f"got {value}", attribute.name)


class _HashIndex:
    """Hashes with the record they came from; finds one within a Hamming distance."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.exact: dict[int, str] = {}
        self.ids: list[str] = []
        self._hashes: Any = None  # numpy uint64 array, grown by doubling
        self._n = 0

    def __len__(self) -> int:
        return len(self.exact) if self.max_distance == 0 else self._n

    def add(self, h: int, ident: str) -> None:
        if self.max_distance == 0:
            self.exact.setdefault(h, ident)
            return
        import numpy as np

        if self._hashes is None or self._n == len(self._hashes):
            grown = np.zeros(max(1024, 2 * self._n), dtype=np.uint64)
            if self._hashes is not None:
                grown[:self._n] = self._hashes[:self._n]
            self._hashes = grown
        self._hashes[self._n] = np.uint64(h)
        self.ids.append(ident)
        self._n += 1

    def find(self, h: int) -> str | None:
        """The record id of a stored hash within ``max_distance`` bits of ``h``, if any."""
        if self.max_distance == 0:
            return self.exact.get(h)
        if self._n == 0:
            return None
        import numpy as np

        diff = np.bitwise_xor(self._hashes[:self._n], np.uint64(h))
        if hasattr(np, "bitwise_count"):
            dist = np.bitwise_count(diff)
        else:  # numpy < 2
            dist = np.unpackbits(diff.view(np.uint8)).reshape(self._n, 64).sum(axis=1)
        hits = np.flatnonzero(dist <= self.max_distance)
        return self.ids[int(hits[0])] if hits.size else None


class Dedupe(privet.Cleaner):
    """Drop near-duplicate images (difference hash); the training split's copy is kept.

    ``max_distance`` is how many of the ``hash_size``² hash bits may differ (0: same
    hash; 4-6 also catches recompressed or slightly cropped copies). Records are told
    apart by ``path``, so cleaning the same record twice never drops it. Dropped
    records get reason ``duplicate``; the hashes are not saved with the model (they
    describe the data set, not what inference needs).
    """

    needs_fit = True
    #: ``privet predict`` skips it: a picture to classify is never a duplicate to drop.
    applies_at_inference = False
    #: Compares records with each other: preparation runs it in one process, in order.
    per_record = False

    @attrs.define(frozen=True)
    class Options:
        hash_size: int = attrs.field(default=8, validator=_hash_size)
        max_distance: int = attrs.field(default=0, validator=_distance)
        image_field: str = "image"
        path_field: str = "path"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._train = _HashIndex(self.options.max_distance)
        self._others = _HashIndex(self.options.max_distance)
        self.tally = Tally("hashed", "duplicates")

    def report(self) -> dict[str, int]:
        return self.tally.report()

    def _hash(self, record: privet.Record) -> tuple[int, str]:
        from .imaging import dhash, open_image

        o = self.options
        data = record.get(o.image_field)
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise privet.DropRecord("missing_image", f"no bytes in field {o.image_field!r}")
        try:
            h = dhash(open_image(bytes(data)), o.hash_size)
        except Exception as err:
            raise privet.DropRecord("undecodable_image", f"{type(err).__name__}: {err}") from None
        path = record.get(o.path_field)
        ident = path if isinstance(path, str) and path else hashlib.sha1(bytes(data)).hexdigest()
        return h, ident

    def fit(self, records: Iterable[privet.Record]) -> None:
        """Hash the training split; the first of each group of look-alikes is the one kept."""
        self._train = _HashIndex(self.options.max_distance)
        self._others = _HashIndex(self.options.max_distance)
        for record in records:
            try:
                h, ident = self._hash(record)
            except privet.DropRecord:
                continue  # clean() drops it with its reason
            if self._train.find(h) is None:
                self._train.add(h, ident)

    def clean(self, record: privet.Record) -> privet.Record | None:
        h, ident = self._hash(record)
        self.tally.add("hashed", record, self.options.path_field)
        for index in (self._train, self._others):
            first = index.find(h)
            if first is not None and first != ident:
                self.tally.add("duplicates", record, self.options.path_field)
                # filtered on purpose, not broken: not counted towards max_bad_fraction
                raise privet.DropRecord("duplicate", f"{ident} looks like {first}", bad=False)
            if first == ident:
                return record
        self._others.add(h, ident)
        return record
