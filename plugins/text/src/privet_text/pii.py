"""PII redaction: emails, phone numbers, payment cards, IBANs, IP addresses, custom IDs.

Each detector is a regular expression for candidates plus, where the format has one, a
checksum (Luhn for cards, ISO 7064 mod 97 for IBANs, ``ipaddress`` for IPs), so that
order numbers and dates are not blanked by mistake. Patterns are only searched near
what they need (an ``@``, a run of digits), which keeps redaction cheap next to
tokenization: most sentences hold neither. Detectors run in a fixed priority
order over the original text and claim spans; a later detector cannot match inside a
claimed span. A card-shaped number that fails the Luhn check is claimed *without*
being replaced, so the phone detector does not redact half of it either.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import unicodedata
import warnings
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Optional

import attrs
import numpy as np
from privet import Cleaner, DropRecord, OptionValueError, Record

from .cleaners import ascii_bytes, field_text, owners
from .safe_regex import compile_regex

#: A validator gets the regex match and returns the span to claim, or None to ignore
#: it; ``replace=False`` claims the span but leaves the text as it is.
Validated = Optional[tuple[int, int, bool]]


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34 and s[:2].isalpha() and s[2:4].isdigit() and s.isalnum()):
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    """The decimal digits of ``text`` as ASCII (full-width and other scripts' digits too)."""
    return "".join(str(unicodedata.decimal(ch)) for ch in text if ch.isdecimal())


def _card(m: re.Match[str]) -> Validated:
    digits = _digits(m.group())
    if not 13 <= len(digits) <= 19:
        return None
    return m.start(), m.end(), luhn_ok(digits)


def _iban(m: re.Match[str]) -> Validated:
    # The pattern is greedy and may swallow a following upper-case word: try shorter ends.
    text = m.group()
    ends = [i + 1 for i, ch in enumerate(text) if ch != " "]
    for end in reversed(ends):
        if iban_ok(text[:end]):
            return m.start(), m.start() + end, True
    return None


def _ip(m: re.Match[str]) -> Validated:
    try:
        ipaddress.ip_address(m.group())
    except ValueError:
        return None
    return m.start(), m.end(), True


def _phone(m: re.Match[str]) -> Validated:
    n = len(_digits(m.group()))
    return (m.start(), m.end(), True) if 7 <= n <= 15 else None


def _always(m: re.Match[str]) -> Validated:
    return m.start(), m.end(), True


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![a-z0-9])")
# 13-19 digits written as one run, in groups of four (16-19 digits) or Amex's 4-6-5.
_CARD = re.compile(
    r"(?<![\d+-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{4}(?:[ -]?\d{1,3})?"
    r"|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?![\w])"   # +44 20 7946 0958, +1-800-555-0199
    r"|(?<![\w+-])\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]?\d{3,4}(?![\w-])"  # (555) 123-4567, 030 1234 5678
    r"|(?<![\w+-])\d{3}-\d{4}(?![\w-])")                          # 555-1234

_DIGITS = "0123456789"
#: What every built-in detector needs at least one of: a digit (of any script), ``:`` or ``@``.
_TRIGGER = re.compile(r"[\d:@]")
_TRIGGER_BYTES = np.zeros(256, dtype=bool)
_TRIGGER_BYTES[[*b"0123456789:@"]] = True
_ANY_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d[\d \t().+/:-]*")
#: Characters searched on each side of an anchor (an @, a run of digits): longer than any
#: part of an email, IBAN, card, phone or IP address that lies outside the anchor run.
_MARGIN = {"at": (64, 256), "digits": (40, 40)}


@attrs.define(frozen=True)
class Detector:
    """One kind of PII: a candidate pattern, a validator, and where it can possibly be.

    ``scope`` says where the pattern is searched: ``text`` (everywhere), ``at`` (around
    each ``@``) or ``digits`` (around runs of digits); with ``min_digits`` and
    ``min_colons`` most texts skip most detectors without running a regex at all.
    """

    kind: str
    pattern: Any  # a compiled ``re`` (built-ins) or RE2 (user patterns) pattern
    validate: Callable[[re.Match[str]], Validated] = _always
    scope: str = "text"
    min_digits: int = 0
    min_colons: int = 0


#: Built-in detectors in priority order.
BUILTIN = [
    Detector("EMAIL", _EMAIL, scope="at"),
    Detector("IBAN", _IBAN, _iban, scope="digits", min_digits=2),
    Detector("CARD", _CARD, _card, scope="digits", min_digits=13),
    Detector("IP", _IPV4, _ip, scope="digits", min_digits=4),
    Detector("IP", _IPV6, _ip, min_colons=2),
    Detector("PHONE", _PHONE, _phone, scope="digits", min_digits=7),
]
BUILTIN_TYPES = ("EMAIL", "IBAN", "CARD", "IP", "PHONE")


def _merged(spans: Iterable[tuple[int, int]], before: int, after: int, n: int) -> list[tuple[int, int]]:
    """Windows around ``spans``, widened by the margins, clipped to the text and merged."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        lo, hi = max(0, start - before), min(n, end + after)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class Redactor:
    """Finds PII spans in a text and replaces them with typed placeholders."""

    def __init__(self, types: Iterable[str] = BUILTIN_TYPES, patterns: dict[str, str] | None = None,
                 placeholder: str = "<{type}>") -> None:
        wanted = set(types)
        builtin = [d for d in BUILTIN if d.kind in wanted]
        # user patterns run on RE2 (linear time): a crafted one cannot hang a run or predict
        custom = [Detector(name, compile_regex(rx, f"patterns.{name}"))
                  for name, rx in (patterns or {}).items()]
        # Custom ID patterns go before phones (a national ID is often phone-shaped).
        self.detectors = builtin[:-1] + custom + builtin[-1:] if "PHONE" in wanted else builtin + custom
        self._custom = bool(custom)
        self.placeholder = placeholder
        self.counts: Counter[str] = Counter()

    def _windows(self, text: str, scope: str) -> list[tuple[int, int]]:
        if scope == "text":
            return [(0, len(text))]
        if scope == "at":
            anchors, i = [], text.find("@")
            while i >= 0:
                anchors.append((i, i + 1))
                i = text.find("@", i + 1)
        else:
            anchors = [m.span() for m in _DIGIT_RUN.finditer(text)]
        return _merged(anchors, *_MARGIN[scope], len(text))

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, type) of every span to replace, sorted, non-overlapping."""
        claimed: list[tuple[int, int, str | None]] = []
        # ``in`` scans are far cheaper than a regex pass: most texts stop here
        if text.isascii():
            digits = sum(map(text.count, _DIGITS)) if any(map(text.__contains__, _DIGITS)) else 0
        else:  # digits of any script count, as the patterns' \d matches them
            digits = len(_ANY_DIGIT.findall(text))
        colons = text.count(":") if ":" in text else 0
        if not (digits or colons or "@" in text or self._custom):
            return []
        windows: dict[str, list[tuple[int, int]]] = {}
        for d in self.detectors:
            if digits < d.min_digits or colons < d.min_colons:
                continue
            if d.scope not in windows:
                windows[d.scope] = self._windows(text, d.scope)
            for lo, hi in windows[d.scope]:
                for m in d.pattern.finditer(text, lo, hi):
                    found = d.validate(m)
                    if found is None:
                        continue
                    start, end, replace = found
                    if any(start < c_end and c_start < end for c_start, c_end, _ in claimed):
                        continue
                    claimed.append((start, end, d.kind if replace else None))
        return sorted((s, e, k) for s, e, k in claimed if k is not None)

    def redact(self, text: str) -> str:
        spans = self.spans(text)
        if not spans:
            return text
        out, pos = [], 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(self.placeholder.format(type=kind))
            self.counts[kind] += 1
            pos = end
        out.append(text[pos:])
        return "".join(out)


def _types(_instance: Any, attribute: Any, value: list[str]) -> None:
    unknown = sorted(set(value) - set(BUILTIN_TYPES))
    if unknown:
        raise ValueError(f"unknown PII type(s) {unknown}; choose from {list(BUILTIN_TYPES)} "
                         f"or add your own under 'patterns'")


def _patterns(_instance: Any, attribute: Any, value: dict[str, str]) -> None:
    for name, rx in value.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ValueError(f"patterns: name {name!r} must be UPPER_CASE (it becomes <{name}>)")
        compile_regex(rx, f"patterns.{name}")


class PiiWarning(UserWarning):
    """A field that reaches the cache holds PII that ``text.redact_pii`` was told to leave alone."""


def _some_fields(_instance: Any, attribute: Any, value: Optional[list[str]]) -> None:
    if value is not None and not value:
        raise OptionValueError(f"{attribute.name} must name at least one field, or be null to "
                               f"redact every string field", attribute.name)


def _strings(value: Any) -> Iterator[str]:
    """Every string in ``value``, including those nested in lists and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


class RedactPii(Cleaner):
    """Replace emails, phones, card numbers (Luhn-checked), IBANs (mod-97-checked), IP
    addresses and your own ID patterns by typed placeholders such as ``<EMAIL>``.

    By default every string of the record is redacted: the text, the label, the fields a
    source keeps beside them (``keep_fields``) and strings nested in lists and mappings
    (chat ``messages[*].content``). ``fields`` limits redaction to the fields named;
    ``skip_fields`` leaves the fields named alone. A field left alone is still searched:
    the first record where it holds PII raises a :class:`PiiWarning` naming the field, and
    the report counts such records as ``unredacted.FIELD``. ``patterns`` adds detectors by
    regex (RE2 syntax), e.g. ``{SSN: '\\b\\d{3}-\\d{2}-\\d{4}\\b'}`` gives ``<SSN>``.
    Replacement counts by type appear in the run report.
    """

    #: Each record is redacted alone (start_pass only resets the counts): preparation may
    #: run it in worker processes.
    per_record = True

    @attrs.define(frozen=True)
    class Options:
        #: Fields to redact; ``null``: every field that holds strings.
        fields: Optional[list[str]] = attrs.field(default=None, validator=_some_fields)
        #: Fields to leave as they are (with ``fields: null``); PII found there is warned about.
        skip_fields: list[str] = attrs.field(factory=list)
        types: list[str] = attrs.field(factory=lambda: list(BUILTIN_TYPES), validator=_types)
        patterns: dict[str, str] = attrs.field(factory=dict, validator=_patterns)
        placeholder: str = attrs.field(default="<{type}>")

        @placeholder.validator
        def _check_placeholder(self, attribute: Any, value: str) -> None:
            if "{type}" not in value:
                raise ValueError("placeholder must contain {type}, e.g. '<{type}>'")

        def __attrs_post_init__(self) -> None:
            if self.fields is not None and self.skip_fields:
                raise OptionValueError("set fields (what to redact) or skip_fields (what to "
                                       "leave alone), not both", "skip_fields")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        self.redactor = Redactor(o.types, o.patterns, o.placeholder)
        self._skip = frozenset(o.skip_fields)
        self._unredacted: Counter[str] = Counter()
        self._warned: set[str] = set()

    def start_pass(self) -> None:
        # The engine streams the source again for each fitting cleaner: the counts of the
        # last pass are the replacements that reached the cache, so each pass starts at 0.
        self.redactor.counts.clear()
        self._unredacted.clear()

    def clean(self, record: Record) -> Record | None:
        fields = self.options.fields
        if fields is not None:
            for field in fields:
                if not isinstance(record.get(field), (str, list, dict)):
                    field_text(record, field)  # raises DropRecord naming the field
        for key in list(record):
            covered = key not in self._skip if fields is None else key in fields
            if covered:
                record[key] = self._redact(record[key])
            else:
                self._check_left_alone(key, record[key])
        return record

    def clean_batch(self, records: list[Record]) -> list[Record | None | DropRecord]:
        """Records whose strings hold no digit, colon or ``@`` cannot hold PII (with no
        custom patterns): one search over the batch's strings joined by NULs finds the
        others, which go through :meth:`clean`; the rest pass unchanged."""
        if self.redactor._custom:
            return super().clean_batch(records)
        suspects, parts, part_of = self._quiet_or_not(records)
        joined = "\0".join(parts)
        chars = ascii_bytes(joined)
        if chars is not None and parts:  # ASCII: a table look-up per byte, an "any" per part
            starts = np.fromiter(itertools.accumulate((len(p) + 1 for p in parts[:-1]), initial=0),
                                 dtype=np.int64, count=len(parts))
            found = np.flatnonzero(np.logical_or.reduceat(np.append(_TRIGGER_BYTES[chars], False), starts))
            suspects.update(part_of[i] for i in found.tolist())
        elif parts:
            ends = list(itertools.accumulate(len(p) + 1 for p in parts))  # just past each NUL
            hits = [m.start() for m in _TRIGGER.finditer(joined)]
            suspects.update(part_of[i] for i in owners(hits, ends))
        out: list[Record | None | DropRecord] = list(records)
        for i in sorted(suspects):
            try:
                out[i] = self.clean(records[i])
            except DropRecord as drop:
                out[i] = drop
        return out

    def _quiet_or_not(self, records: list[Record]) -> tuple[set[int], list[str], list[int]]:
        """Records that must go through :meth:`clean` whatever their text (nested values,
        named fields missing), and the strings of the others with their record numbers."""
        fields = self.options.fields
        suspects: set[int] = set()
        parts: list[str] = []
        part_of: list[int] = []
        for i, record in enumerate(records):
            if fields is not None and not all(isinstance(record.get(f), str) for f in fields):
                suspects.add(i)
                continue
            for value in record.values():  # fields left alone are searched too (warnings)
                if isinstance(value, str):
                    parts.append(value)
                    part_of.append(i)
                elif isinstance(value, (list, tuple, dict)):
                    suspects.add(i)
                    break
        return suspects, parts, part_of

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, (list, tuple)):
            return [self._redact(item) for item in value]
        if isinstance(value, dict):
            return {k: self._redact(v) for k, v in value.items()}
        return value  # numbers, booleans, null: nothing to redact

    def _check_left_alone(self, key: str, value: Any) -> None:
        kinds = {kind for text in _strings(value) for _s, _e, kind in self.redactor.spans(text)}
        if not kinds:
            return
        self._unredacted[key] += 1
        if key not in self._warned:
            self._warned.add(key)
            why = "listed in skip_fields" if key in self._skip else "not listed in fields"
            warnings.warn(f"text.redact_pii: field {key!r} holds PII ({', '.join(sorted(kinds))}) "
                          f"and is left unredacted ({why}); it reaches the prepared cache as it "
                          f"is: redact it or stop keeping it (keep_fields)", PiiWarning, stacklevel=2)

    def report(self) -> dict[str, int]:
        counts = dict(sorted(self.redactor.counts.items()))
        counts.update({f"unredacted.{k}": n for k, n in sorted(self._unredacted.items())})
        return counts


__all__ = ["BUILTIN_TYPES", "Detector", "PiiWarning", "RedactPii", "Redactor", "iban_ok", "luhn_ok"]
