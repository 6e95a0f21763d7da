"""text.strip_html, text.normalize, text.length_filter, text.language_filter, text.dedupe."""

from __future__ import annotations

import pytest

from privet import ConfigError, DropRecord


def clean(cleaner, text, **extra):
    return cleaner.clean({"text": text, **extra})["text"]


def test_strip_html_removes_tags_scripts_styles_and_decodes_entities(host):
    cleaner = host.make("cleaner", "text.strip_html")
    html = ("<html><head><title>T</title><style>p {color: red}</style></head><body>"
            "<script>var secret = 'x';</script><p>Fish &amp; chips&nbsp;&#8212; caf&eacute;</p>"
            "<!-- a comment --><ul><li>one</li><li>two</li></ul>tail<br/>end</body></html>")
    assert clean(cleaner, html) == "Fish & chips\xa0— café\none\ntwo\ntail\nend"


def test_strip_html_leaves_plain_text_alone(host):
    cleaner = host.make("cleaner", "text.strip_html")
    text = "3 < 4 and 5 > 2, a  b"
    assert clean(cleaner, text) == text


def test_strip_html_drops_a_record_left_empty(host):
    cleaner = host.make("cleaner", "text.strip_html")
    with pytest.raises(DropRecord) as info:
        clean(cleaner, "<script>only()</script><style>x{}</style>")
    assert info.value.reason == "empty_text"


def test_normalize_applies_nfkc_removes_controls_and_collapses_whitespace(host):
    cleaner = host.make("cleaner", "text.normalize")
    text = "\ufeffＦｕｌｌ\u200bwidth  ｆｉ\x07 text\t\tand\n\n\n  more ①"
    assert clean(cleaner, text) == "Fullwidth fi text and\nmore 1"


def test_normalize_custom_patterns_single_line_and_lowercase(host):
    cleaner = host.make("cleaner", "text.normalize", {
        "form": None, "remove": r"[#*]", "replace": {r"\d+": "0"},
        "whitespace": "single_line", "lowercase": True})
    assert clean(cleaner, "Order #123\n\n**Shipped** in 45 days") == "order 0 shipped in 0 days"


def test_normalize_rejects_an_invalid_regex_naming_the_option(host):
    with pytest.raises(ConfigError, match=r"text.normalize.*remove: invalid regular expression"):
        host.make("cleaner", "text.normalize", {"remove": "[unclosed"})
    with pytest.raises(ConfigError, match="invalid regular expression"):
        host.make("cleaner", "text.normalize", {"replace": {"(": "x"}})


def test_normalize_keeps_chinese_and_other_fields(host):
    cleaner = host.make("cleaner", "text.normalize", {"fields": ["text", "title"]})
    record = cleaner.clean({"text": "我爱　北京", "title": "Ｔｉｔｌｅ", "label": "x"})
    assert record == {"text": "我爱 北京", "title": "Title", "label": "x"}


def test_cleaners_drop_records_missing_the_field(host):
    cleaner = host.make("cleaner", "text.normalize")
    with pytest.raises(DropRecord) as info:
        cleaner.clean({"label": "a"})
    assert info.value.reason == "missing_text"


def test_length_filter_by_chars_and_words(host):
    cleaner = host.make("cleaner", "text.length_filter",
                        {"min_chars": 5, "max_chars": 30, "min_words": 2, "max_words": 4})
    assert clean(cleaner, "two words") == "two words"
    for text, reason in [("tiny", "too_short"), ("one-long-word", "too_short"),
                         ("a b c d e", "too_long"), ("x" * 31, "too_long")]:
        with pytest.raises(DropRecord) as info:
            clean(cleaner, text)
        assert info.value.reason == reason, text


def test_length_filter_can_truncate(host):
    cleaner = host.make("cleaner", "text.length_filter", {"max_chars": 5, "truncate": True})
    assert clean(cleaner, "abcdefgh") == "abcde"
    with pytest.raises(ConfigError, match="truncate needs max_chars"):
        host.make("cleaner", "text.length_filter", {"truncate": True})


def test_language_filter_keeps_listed_languages_and_reports_the_others(host):
    cleaner = host.make("cleaner", "text.language_filter",
                        {"languages": ["en", "zh"], "store_as": "lang"})
    assert cleaner.clean({"text": "The weather is lovely today and we walk in the park"})["lang"] == "en"
    assert cleaner.clean({"text": "今天天气很好，我们去公园散步吧"})["lang"] == "zh"
    with pytest.raises(DropRecord) as info:
        cleaner.clean({"text": "Das Wetter ist heute schön und wir gehen im Park spazieren"})
    assert info.value.reason == "wrong_language"
    assert cleaner.report() == {"dropped_de": 1}


def test_language_filter_min_confidence(host):
    cleaner = host.make("cleaner", "text.language_filter", {"languages": ["en"], "min_confidence": 0.99})
    with pytest.raises(DropRecord) as info:
        cleaner.clean({"text": "ok"})
    assert info.value.reason in ("uncertain_language", "wrong_language")
    assert cleaner.clean({"text": "The quick brown fox jumps over the lazy dog, and then the "
                                  "dog sleeps in the warm afternoon sun."})


def test_dedupe_exact_ignores_case_whitespace_and_punctuation(host):
    cleaner = host.make("cleaner", "text.dedupe")
    assert cleaner.clean({"text": "Hello, World!"})
    for dup in ["hello world", "HELLO   WORLD.", "Hello,\nworld"]:
        with pytest.raises(DropRecord) as info:
            cleaner.clean({"text": dup})
        assert info.value.reason == "duplicate"
    assert cleaner.clean({"text": "Hello there world"})
    assert cleaner.report() == {"exact_duplicates": 3, "near_duplicates": 0}


def test_dedupe_exact_can_keep_punctuation(host):
    cleaner = host.make("cleaner", "text.dedupe", {"keep_punctuation": True})
    cleaner.clean({"text": "Hello, world"})
    assert cleaner.clean({"text": "Hello world"})


NEAR = [
    "The quarterly report shows revenue grew by twelve percent while costs stayed flat across all regions.",
    "The quarterly report shows revenue grew by twelve percent while costs stayed flat across most regions.",
    "Our new recipe uses fresh basil, ripe tomatoes and a little garlic for a bright summer sauce.",
    "the quarterly report shows revenue grew by twelve percent, while costs stayed flat across all regions",
    "A completely different note about the train timetable changes planned for next spring.",
]


def test_dedupe_minhash_drops_near_duplicates_and_keeps_distinct_texts(host):
    cleaner = host.make("cleaner", "text.dedupe", {"method": "minhash", "threshold": 0.7})
    kept, reasons = [], []
    for text in NEAR:
        try:
            cleaner.clean({"text": text})
            kept.append(text)
        except DropRecord as drop:
            reasons.append(drop.reason)
    assert kept == [NEAR[0], NEAR[2], NEAR[4]]
    assert reasons == ["near_duplicate", "duplicate"]
    assert cleaner.report() == {"exact_duplicates": 1, "near_duplicates": 1}


def test_dedupe_minhash_is_deterministic_across_instances(host):
    def survivors():
        cleaner = host.make("cleaner", "text.dedupe", {"method": "minhash", "threshold": 0.5})
        out = []
        for i in range(60):
            text = f"item {i % 20} of the catalogue with words {' '.join(str(j) for j in range(i % 7))}"
            try:
                cleaner.clean({"text": text})
                out.append(i)
            except DropRecord:
                pass
        return out

    first = survivors()
    assert first == survivors()
    assert 0 < len(first) < 60


def test_dedupe_state_is_not_saved_with_the_model(host):
    cleaner = host.make("cleaner", "text.dedupe")
    cleaner.clean({"text": "some text"})
    assert cleaner.state_dict() == {}


def test_minhash_estimates_jaccard_similarity():
    from privet_text.dedupe import MinHasher

    hasher = MinHasher(num_perm=256, shingle=4, seed=3)

    def jaccard(a, b, n=4):
        x = {a[i:i + n] for i in range(len(a) - n + 1)}
        y = {b[i:i + n] for i in range(len(b) - n + 1)}
        return len(x & y) / len(x | y)

    a, b = NEAR[0], NEAR[1]
    estimate = float((hasher.signature(a) == hasher.signature(b)).mean())
    assert abs(estimate - jaccard(a, b)) < 0.1
    assert float((hasher.signature(a) == hasher.signature(NEAR[2])).mean()) < 0.1


def test_normalize_collapses_unicode_spaces_even_without_nfkc(host):
    cleaner = host.make("cleaner", "text.normalize", {"form": None})
    assert clean(cleaner, "a\xa0\xa0b\u3000c\u2009 d\r\ne") == "a b c d\ne"
    assert clean(cleaner, "plain printable text") == "plain printable text"


# --- user-supplied regexes run in linear time (RE2) ------------------------------------------

#: Catastrophic backtracking: with Python's ``re`` this takes about 2**40 steps (hours).
EVIL_PATTERN = r"(a+)+$"
EVIL_TEXT = "a" * 40 + "!"


def test_normalize_a_catastrophic_replace_pattern_finishes(host):
    cleaner = host.make("cleaner", "text.normalize", {"replace": {EVIL_PATTERN: "X"}})
    assert cleaner.clean({"text": EVIL_TEXT})["text"] == EVIL_TEXT  # no match, and no hang
    assert cleaner.clean({"text": "x aaa"})["text"] == "x X"
    remover = host.make("cleaner", "text.normalize", {"remove": EVIL_PATTERN})
    assert remover.clean({"text": EVIL_TEXT})["text"] == EVIL_TEXT


@pytest.mark.parametrize("options,message", [
    ({"replace": {r"(a)\1": "b"}}, r"text.normalize.*replace.*replace\.\(a\)\\1: invalid regular expression"),
    ({"remove": r"(?<!x)y"}, r"text.normalize.*remove.*remove: invalid regular expression.*RE2"),
    ({"replace": {r"(a)": r"[\2]"}}, r"replace\.\(a\): replacement .* refers to group '2'"),
    ({"replace": {r"(?P<w>a)": r"\g<x>"}}, r"refers to group 'x'"),
])
def test_normalize_patterns_re2_cannot_run_are_one_line_config_errors(host, options, message):
    with pytest.raises(ConfigError, match=message) as err:
        host.make("cleaner", "text.normalize", options)
    assert "\n" not in str(err.value)


def test_normalize_accepts_python_unicode_escapes_and_group_references(host):
    cleaner = host.make("cleaner", "text.normalize", {
        "remove": r"[\u200b\U0001F600]", "replace": {r"(\w+)@(\w+)": r"\2 at \1", r"\p{Nd}+": "#"}})
    assert cleaner.clean({"text": "a\u200bb\U0001F600 joe@host ٣٤ 12"})["text"] == "ab host at joe # #"
