"""clean_batch of the text cleaners: the same records, drops and counters as clean, record by
record, on a corpus of ordinary and awkward texts, whatever the batch size."""

from __future__ import annotations

import copy
import random
import time
import warnings

import pytest

from privet import DropRecord

AWKWARD = [
    "", " ", "\t\n", "plain text", "  padded  text  ", "two  spaces", "line\nbreaks\n\n\nhere",
    "tab\there", "ＦＵＬＬ ｗｉｄｔｈ", "e\u0301 decomposed", "\u0301 leading mark", "zero\u200bwidth",
    "ctrl\x07char", "nul\x00byte", "ΟΔΟΣ ΣΟΦΟΣ", "İstanbul", "emoji 😀", "lone \ud800 surrogate",
    "<p>Fish &amp; chips</p>", "3 < 4 and 5 > 2", "&amp;", "<", "&", "a <b>bold</b> move",
    "<script>x()</script>", "<br/>", "mail anna.k@example.com now", "call +44 20 7946 0958",
    "card 4111 1111 1111 1111 ok", "card 4111 1111 1111 1112 bad", "IBAN DE89 3704 0044 0532 0130 00",
    "ip 192.168.0.1 and ::1", "time 12:30", "order 1234567", "٣٤٥٦٧٨٩ arabic digits",
    "user@host", "@", ":", "no pii at all", "x" * 2000, "A" * 3 + "  " + "b",
]


def corpus(n: int = 400, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dogs while support answered within days".split()
    records: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.3:
            text = rng.choice(AWKWARD)
        elif roll < 0.4:
            text = " ".join(rng.choice(words) for _ in range(8)) + " " + rng.choice(AWKWARD)
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        record: dict = {"text": text, "label": rng.choice(["pos", "neg", "call 555-1234"])}
        if roll > 0.97:
            record["meta"] = {"note": rng.choice(AWKWARD), "n": i}
        if roll > 0.99:
            record["messages"] = [{"content": rng.choice(AWKWARD)}]
        records.append(record)
    records += [{"label": "no text"}, {"text": 5, "label": "x"}, {"text": None}, {"text": ["a list"]}]
    rng.shuffle(records)
    return records


def show(result) -> str:
    return f"drop {result.reason}: {result.detail}" if isinstance(result, DropRecord) else repr(result)


def per_record(cleaner, records):
    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for record in copy.deepcopy(records):
            try:
                out.append(show(cleaner.clean(record)))
            except DropRecord as drop:
                out.append(show(drop))
    return out, [str(w.message) for w in caught]


def batched(cleaner, records, size):
    out = []
    records = copy.deepcopy(records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, len(records), size):
            out += [show(r) for r in cleaner.clean_batch(records[start:start + size])]
    return out, [str(w.message) for w in caught]


CLEANERS = [
    ("text.normalize", {}),
    ("text.normalize", {"form": None, "whitespace": "single_line", "lowercase": True}),
    ("text.normalize", {"form": "NFD", "whitespace": "keep", "remove": None}),
    ("text.normalize", {"replace": {r"\d+": "#"}, "remove": "[aeiou]", "fields": ["text", "label"]}),
    ("text.strip_html", {}),
    ("text.strip_html", {"fields": ["text", "label"]}),
    ("text.redact_pii", {}),
    ("text.redact_pii", {"fields": ["text"]}),
    ("text.redact_pii", {"skip_fields": ["label"], "types": ["EMAIL", "PHONE"]}),
    ("text.redact_pii", {"patterns": {"ORDER": r"order \d+"}}),
]


@pytest.mark.parametrize("name,options", CLEANERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CLEANERS)])
def test_clean_batch_gives_what_clean_gives_record_by_record(host, name, options):
    records = corpus()
    one = host.make("cleaner", name, options)
    expected, expected_warnings = per_record(one, records)
    assert any(not e.startswith("drop ") for e in expected)
    assert sum(a != b for a, b in zip(expected, map(show, records))) > 10  # it does change things
    for size in (1, 7, 512):
        many = host.make("cleaner", name, options)
        got, got_warnings = batched(many, records, size)
        assert got == expected, size
        assert many.report() == one.report()
        assert got_warnings == expected_warnings


@pytest.mark.parametrize("form", ["NFC", "NFKC", "NFD", None])
def test_normalize_batches_of_random_marks_and_blanks_match_record_by_record(host, form):
    rng = random.Random(9)
    alphabet = ["e", "\u0301", "\u0323", "ﬁ", " ", "  ", "A", "\u00e9", "\t", "x", "\u3000", "<b>", "&amp;"]
    records = [{"text": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))} for _ in range(400)]
    ascii_only = [{"text": "".join(rng.choice(["a", " ", "  ", "B"]) for _ in range(5))} for _ in range(100)]
    for options in ({"form": form}, {"form": form, "whitespace": "single_line", "lowercase": True}):
        for corpus_ in (records, ascii_only):
            expected, _ = per_record(host.make("cleaner", "text.normalize", options), corpus_)
            assert batched(host.make("cleaner", "text.normalize", options), corpus_, 64)[0] == expected


def test_batched_cleaners_change_what_they_should(host):
    records = [{"text": "<b>Hi</b>  anna.k@example.com ", "label": "x"}, {"text": "plain words"}]
    html, norm, pii = (host.make("cleaner", n) for n in ("text.strip_html", "text.normalize", "text.redact_pii"))
    out = pii.clean_batch(norm.clean_batch(html.clean_batch(records)))
    assert [r["text"] for r in out] == ["Hi <EMAIL>", "plain words"]
    assert pii.report() == {"EMAIL": 1}


# --- a pathological user regex cannot stall preparation ----------------------------------

EVIL = r"(a+)+$"  # catastrophic backtracking under Python's re: about 2**n steps


@pytest.mark.parametrize("name,options", [("text.normalize", {"replace": {EVIL: "X"}}),
                                          ("text.normalize", {"remove": EVIL}),
                                          ("text.redact_pii", {"patterns": {"EVIL": EVIL}})])
def test_a_catastrophic_pattern_over_a_batch_of_long_records_finishes_fast(host, name, options):
    cleaner = host.make("cleaner", name, options)
    records = [{"text": "a" * 20_000 + "!"} for _ in range(50)]  # re would need ~2**20000 steps
    start = time.perf_counter()
    out = cleaner.clean_batch(records)
    assert time.perf_counter() - start < 5.0
    assert [r["text"] for r in out] == ["a" * 20_000 + "!"] * 50  # no match, and no hang


def test_a_lone_surrogate_reaches_the_re2_patterns_without_crashing_them(host):
    """A JSON ``"\\ud800"`` escape gives a string RE2 (UTF-8) cannot take: matched as U+FFFD."""
    normalize = host.make("cleaner", "text.normalize", {"replace": {"x+": "y"}})
    assert normalize.clean_batch([{"text": "a\ud800\x07 xx"}])[0]["text"] == "a\ufffd y"
    pii = host.make("cleaner", "text.redact_pii", {"patterns": {"REF": r"REF-\d+"}})
    out = pii.clean_batch([{"text": "\udfff see REF-123 \ud800"}])[0]["text"]
    assert out == "\udfff see <REF> \ud800"  # spans found on the U+FFFD copy; the text kept
