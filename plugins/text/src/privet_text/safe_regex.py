"""User-supplied regular expressions, compiled with RE2 so matching takes linear time.

Python's ``re`` backtracks: ``(a+)+$`` against ``"a" * 40 + "!"`` runs for hours. Patterns
come from a pipeline file and also from bundles and run folders someone else made (cleaner
options travel with every export and are rebuilt by ``privet predict``), so every pattern a
user can write (``text.normalize`` ``remove``/``replace``, ``text.redact_pii`` ``patterns``)
is compiled here with google-re2, whose automaton never backtracks. RE2 has no
backreferences and no lookaround; such a pattern is a one-line config error naming the
option. Python-style ``\\uXXXX`` / ``\\UXXXXXXXX`` escapes are accepted (RE2 spells them
``\\x{XXXX}``). Unlike ``re``, RE2's ``\\d``, ``\\w`` and ``\\s`` are ASCII only: write
``\\p{Nd}``, ``[\\p{L}\\p{N}_]`` or ``\\p{Z}`` for other scripts.
"""

from __future__ import annotations

import re
from typing import Any

import re2
from privet import OptionValueError

# An even run of backslashes (kept), then \uXXXX or \UXXXXXXXX: a Python escape.
_PY_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))")
# Group references in a replacement string: \1 .. \99 and \g<name or number>.
_GROUP_REF = re.compile(r"\\\\|\\(\d{1,2})|\\g<([^>]*)>")


def _re2_syntax(pattern: str) -> str:
    return _PY_ESCAPE.sub(lambda m: f"{m.group(1)}\\x{{{m.group(2) or m.group(3)}}}", pattern)


#: Lone surrogates: Python strings may hold them (a JSON ``"\\ud800"`` escape makes one),
#: UTF-8, which RE2 matches on, cannot.
_SURROGATE = re.compile("[\ud800-\udfff]")


class SafePattern:
    """An RE2 pattern that also takes text with lone surrogates.

    RE2 matches UTF-8, and the ``re2`` module's encoding of such a text raises. Each lone
    surrogate is then matched as U+FFFD, one character for one, so positions hold; what
    ``sub`` returns has U+FFFD in its place, as any UTF-8 writer would.
    """

    def __init__(self, compiled: Any) -> None:
        self._re2 = compiled
        self.pattern = compiled.pattern
        self.groups = compiled.groups
        self.groupindex = compiled.groupindex

    def sub(self, repl: str, text: str, count: int = 0) -> str:
        try:
            return self._re2.sub(repl, text, count)
        except UnicodeEncodeError:
            return self._re2.sub(repl, _SURROGATE.sub("\ufffd", text), count)

    def finditer(self, text: str, pos: int = 0, endpos: int | None = None) -> list[Any]:
        """All matches at once (RE2's iterator would raise only once consumed)."""
        try:
            return list(self._re2.finditer(text, pos, endpos))
        except UnicodeEncodeError:
            return list(self._re2.finditer(_SURROGATE.sub("\ufffd", text), pos, endpos))

    def search(self, text: str, pos: int = 0, endpos: int | None = None) -> Any:
        try:
            return self._re2.search(text, pos, endpos)
        except UnicodeEncodeError:
            return self._re2.search(_SURROGATE.sub("\ufffd", text), pos, endpos)


def compile_regex(pattern: str, option: str) -> SafePattern:
    """``pattern`` compiled by RE2, or an OptionValueError naming ``option``."""
    if not isinstance(pattern, str):
        raise OptionValueError(f"{option}: expected a regular expression string, got "
                               f"{type(pattern).__name__}", option.split(".")[0])
    options = re2.Options()
    options.log_errors = False  # the error goes to the user as one line, not to stderr
    try:
        return SafePattern(re2.compile(_re2_syntax(pattern), options))
    except re2.error as err:
        why = err.args[0] if err.args else err  # RE2 gives the reason as bytes
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        raise OptionValueError(
            f"{option}: invalid regular expression {pattern!r}: {why}; patterns run on RE2 "
            f"(linear time: no backreferences, no lookaround)", option.split(".")[0]) from None


def check_template(compiled: Any, template: str, option: str) -> None:
    """Fail at validation, not mid-run, when ``template`` names a group the pattern lacks."""
    for m in _GROUP_REF.finditer(template):
        ref = m.group(1) if m.group(1) is not None else m.group(2)
        if ref is None:
            continue  # an escaped backslash
        known = ref.isdigit() and int(ref) <= compiled.groups or ref in compiled.groupindex
        if not known:
            raise OptionValueError(f"{option}: replacement {template!r} refers to group {ref!r}, "
                                   f"which the pattern does not define", option.split(".")[0])


__all__ = ["SafePattern", "check_template", "compile_regex"]
