"""Tokenizers trained on the training split: BPE, Unigram, spaCy words; state round trips."""

from __future__ import annotations

import json
import sys

import pytest

from privet import ConfigError
from privet_text.tokenizer import TextTokenizer, TokenizerOptions

def _english(n: int = 200) -> list[str]:
    """Sentences of words sharing stems and suffixes, as real text does."""
    import random

    rng = random.Random(0)
    stems = ["play", "walk", "talk", "jump", "work", "read", "paint", "clean", "cook", "open"]
    suffixes = ["", "s", "ed", "ing", "er", "ers"]
    return [" ".join(rng.choice(stems) + rng.choice(suffixes) for _ in range(8)) for _ in range(n)]


ENGLISH = _english()
CHINESE = ["我爱北京天安门", "今天天气很好，我们去公园散步", "北京的天气今天很好", "我们爱公园"] * 20


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("corpus", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_subword_tokenizers_learn_a_vocabulary_and_decode_exactly(kind, corpus):
    tok = TextTokenizer.train(iter(corpus), TokenizerOptions(kind=kind, vocab_size=300, min_frequency=1))
    text = corpus[1]
    ids = tok.encode(text)
    assert all(i >= 4 for i in ids), "no special or unknown ids for text seen in training"
    assert len(ids) < len(text.encode("utf-8")), "merges were learned"
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, corpus[0]]) == [ids, tok.encode(corpus[0])]


def test_byte_level_bpe_encodes_unseen_characters():
    tok = TextTokenizer.train(iter(ENGLISH), TokenizerOptions(vocab_size=300))
    unseen = "Zürich 東京 🙂"
    ids = tok.encode(unseen)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == unseen


def test_special_ids_are_fixed_and_skipped_when_decoding():
    tok = TextTokenizer.train(iter(ENGLISH), TokenizerOptions(vocab_size=300))
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.hf.token_to_id("<eos>") == 3
    ids = tok.encode("the painter")
    assert tok.decode([tok.eos_id] + ids + [tok.pad_id]) == "the painter"


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_state_is_json_and_reloads_to_the_same_encoding(kind):
    tok = TextTokenizer.train(iter(ENGLISH + CHINESE), TokenizerOptions(kind=kind, vocab_size=400))
    state = json.loads(json.dumps(tok.state()))
    again = TextTokenizer.from_state(state)
    for text in ["the walker met 我们", "北京 cooking log"]:
        assert again.encode(text) == tok.encode(text)
    assert again.vocab_size == tok.vocab_size


def test_lowercase_option_is_part_of_the_saved_tokenizer():
    tok = TextTokenizer.train(iter(ENGLISH), TokenizerOptions(vocab_size=300, lowercase=True))
    again = TextTokenizer.from_state(tok.state())
    assert again.encode("PLAYING WALKERS") == tok.encode("playing walkers")


def test_max_train_texts_limits_what_the_tokenizer_sees():
    texts = ["alpha beta"] * 10 + ["gamma delta"] * 10
    tok = TextTokenizer.train(iter(texts), TokenizerOptions(vocab_size=300, min_frequency=1,
                                                            max_train_texts=10))
    assert len(tok.encode("alpha beta")) < len(tok.encode("gamma delta"))


def test_unknown_state_kind_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown tokenizer state kind"):
        TextTokenizer.from_state({"kind": "wordpiece9"})


def test_spacy_word_tokenizer_builds_a_word_vocabulary():
    pytest.importorskip("spacy")
    tok = TextTokenizer.train(iter(["Don't stop, the cat sat."] * 3 + ["rare"]),
                              TokenizerOptions(kind="spacy", vocab_size=50, min_frequency=2))
    assert tok.vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    ids = tok.encode("Don't stop the rare cat")
    assert tok.decode(ids) == "Do n't stop the cat"  # 'rare' was seen once: <unk>, skipped
    assert tok.unk_id in ids
    again = TextTokenizer.from_state(json.loads(json.dumps(tok.state())))
    assert again.encode("the cat sat") == tok.encode("the cat sat")


def test_spacy_blank_chinese_splits_characters():
    pytest.importorskip("spacy")
    tok = TextTokenizer.train(iter(CHINESE), TokenizerOptions(kind="spacy", lang="zh", vocab_size=100))
    assert tok.decode(tok.encode("我爱北京")) == "我 爱 北 京"


def test_spacy_kind_without_spacy_is_a_config_error_naming_the_extra(host, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tokenizer: kind 'spacy' needs spaCy.*privet-text\[spacy\]"):
        host.make("model", "text.classifier", {"tokenizer": {"kind": "spacy"}})


def test_a_saved_spacy_tokenizer_without_spacy_installed_says_what_to_install(monkeypatch):
    tok = TextTokenizer.from_state({"kind": "spacy", "lang": "en", "vocab": ["<pad>", "<unk>", "<bos>", "<eos>", "a"]})
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'privet-text\[spacy\]'"):
        tok.encode("a b")


def test_spacy_unknown_language_is_a_config_error():
    pytest.importorskip("spacy")
    tok = TextTokenizer("spacy", lang="xx-nope", vocab=["<pad>", "<unk>", "<bos>", "<eos>"])
    with pytest.raises(ConfigError, match="no blank pipeline for language 'xx-nope'"):
        tok.encode("a b")
