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


# --- text.pos_tag: a tiny spaCy tagger trained here (nothing downloaded) ------------------

TAGGED = [("the dog runs quickly .", "DT NN VBZ RB ."),
          ("she dogs the cat .", "PRP VBZ DT NN ."),
          ("the happy cat sleeps , quickly", "DT JJ NN VBZ , RB")]
PENN_TO_UPOS = {"DT": "DET", "NN": "NOUN", "VBZ": "VERB", "RB": "ADV", "PRP": "PRON", "JJ": "ADJ",
                ".": "PUNCT", ",": "PUNCT"}


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory):
    """A spaCy pipeline with a trained tagger (Penn tags) and an attribute ruler mapping
    them to universal tags, saved with ``nlp.to_disk`` as a user would."""
    spacy = pytest.importorskip("spacy")
    from spacy.training import Example

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("tagger")
    ruler = nlp.add_pipe("attribute_ruler")
    examples = [Example.from_dict(nlp.make_doc(text), {"tags": tags.split()}) for text, tags in TAGGED]
    optimizer = nlp.initialize(lambda: examples)
    ruler.load_from_tag_map({tag: {"POS": pos} for tag, pos in PENN_TO_UPOS.items()})
    for _ in range(40):
        nlp.update(examples, sgd=optimizer)
    folder = tmp_path_factory.mktemp("spacy") / "tiny_tagger"
    nlp.to_disk(folder)
    return folder


def test_pos_tag_adds_a_tag_per_token_from_a_local_spacy_tagger(host, tiny_tagger):
    cleaner = host.make("cleaner", "text.pos_tag", {"pipeline": str(tiny_tagger)})
    record = cleaner.clean({"text": "the dog runs quickly .", "label": 1})
    assert record["tokens"] == ["the", "dog", "runs", "quickly", "."]
    assert record["pos"] == ["DET", "NOUN", "VERB", "ADV", "PUNCT"]
    assert record["text"] == "the dog runs quickly ." and record["label"] == 1
    fine = host.make("cleaner", "text.pos_tag", {"pipeline": str(tiny_tagger), "scheme": "fine",
                                                 "store_as": "tags", "tokens_as": "words"})
    record = fine.clean({"text": "she dogs the cat ."})
    assert record["words"] == ["she", "dogs", "the", "cat", "."]
    assert record["tags"] == ["PRP", "VBZ", "DT", "NN", "."]
    assert "pos" not in record


def test_pos_tags_survive_pickling_to_a_worker_process(host, tiny_tagger):
    import pickle

    cleaner = host.make("cleaner", "text.pos_tag", {"pipeline": str(tiny_tagger)})
    copy = pickle.loads(pickle.dumps(cleaner))
    assert copy.clean({"text": "the happy cat sleeps , quickly"})["pos"] == [
        "DET", "ADJ", "NOUN", "VERB", "PUNCT", "ADV"]


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/wordnet/index.noun").is_file(),
                    reason="WordNet 3.0 data not installed (Debian: apt-get install wordnet-base)")
def test_pos_tagged_dog_the_noun_never_becomes_tag_the_verb(host, tiny_tagger):
    import numpy as np
    from privet_text.synonyms import WordNet

    tagger = host.make("cleaner", "text.pos_tag", {"pipeline": str(tiny_tagger)})
    synonym = host.make("augmenter", "text.synonym", {"wordnet": True, "p": 1.0, "alpha": 1.0})
    verb_words = {w for s in WordNet().synonyms("dog", "verb") for w in s.split()} - {"after"}
    noun_words = {w for s in WordNet().synonyms("dog", "noun") for w in s.split()}
    assert "tag" in verb_words and "hound" in noun_words
    tagged, untagged = set(), set()
    for seed in range(40):
        record = tagger.clean({"text": "the dog runs quickly ."})
        tagged |= set(synonym.augment(record, np.random.default_rng([seed, 0, 0]))["text"].split())
        plain = {"text": "the dog runs quickly ."}
        untagged |= set(synonym.augment(plain, np.random.default_rng([seed, 0, 0]))["text"].split())
    assert tagged & noun_words and not tagged & verb_words
    assert untagged & verb_words  # without tags WordNet's verb senses of "dog" are used too


def test_pos_tag_names_what_to_install_when_the_pipeline_is_missing(host):
    with pytest.raises(ConfigError, match=r"text.pos_tag.*pipeline: spaCy pipeline 'no_such_pipeline_xyz' "
                                          r"is neither an installed package nor a folder; install .*"
                                          r"en_core_web_sm.*downloads nothing"):
        host.make("cleaner", "text.pos_tag", {"pipeline": "no_such_pipeline_xyz"})


def test_pos_tag_refuses_a_pipeline_without_a_tagger(host, tmp_path):
    spacy = pytest.importorskip("spacy")
    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(ConfigError, match=r"has no tagger \(components: none\).*'tagger' or 'morphologizer'"):
        host.make("cleaner", "text.pos_tag", {"pipeline": str(tmp_path / "blank")})


def test_pos_tag_without_spacy_says_which_extra_to_install(host, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs spaCy, which is not installed; pip install 'privet-text\[spacy\]'"):
        host.make("cleaner", "text.pos_tag", {"pipeline": "en_core_web_sm"})


def _planted(seed: int = 7, bases: int = 300, near: int = 60) -> tuple[list[str], set[int]]:
    """Distinct random texts, then near copies (one word changed) of some: (texts, planted)."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choice(vocab) for _ in range(40)) for _ in range(bases)]
    planted = set()
    for _ in range(near):
        words = rng.choice(texts[:bases]).split()
        words[rng.randrange(len(words))] = rng.choice(vocab)
        planted.add(len(texts))
        texts.append(" ".join(words))
    return texts, planted


def test_dedupe_minhash_matches_datasketch_on_planted_near_duplicates(host):
    datasketch = pytest.importorskip("datasketch")  # declared in privet-text[test]
    from privet_text.dedupe import canonical

    texts, planted = _planted()
    cleaner = host.make("cleaner", "text.dedupe", {"method": "minhash", "threshold": 0.8})
    out = cleaner.clean_batch([{"text": t} for t in texts])
    ours = {i for i, r in enumerate(out) if isinstance(r, DropRecord)}

    lsh, reference = datasketch.MinHashLSH(threshold=0.8, num_perm=128), set()
    for i, text in enumerate(texts):
        c = canonical(text, punctuation=False)
        m = datasketch.MinHash(num_perm=128, seed=1)
        m.update_batch([c[j:j + 5].encode() for j in range(len(c) - 4)])
        if any(lsh.query(m)):
            reference.add(i)
        else:
            lsh.insert(str(i), m)
    recall, precision = len(ours & planted) / len(planted), len(ours & planted) / max(1, len(ours))
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert len(ours ^ reference) <= 0.05 * len(planted), (sorted(ours - reference), sorted(reference - ours))


def test_dedupe_clean_batch_equals_clean_per_record(host):
    texts, _ = _planted(bases=120, near=30)
    texts += texts[:10]  # exact duplicates too
    one = host.make("cleaner", "text.dedupe", {"method": "minhash"})
    per_record = []
    for t in texts:
        try:
            per_record.append(one.clean({"text": t}) is not None)
        except DropRecord:
            per_record.append(False)
    many = host.make("cleaner", "text.dedupe", {"method": "minhash"})
    batched = [not isinstance(r, DropRecord) for i in range(0, len(texts), 64)
               for r in many.clean_batch([{"text": t} for t in texts[i:i + 64]])]
    assert batched == per_record and one.report() == many.report()
    assert many.report()["exact_duplicates"] == 10
