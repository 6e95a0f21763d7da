"""EDA augmenters, synonym sources (thesaurus files, WordNet files) and back-translation."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from privet import ConfigError
from privet_text.synonyms import Thesaurus, WordNet

SENTENCE = "The happy dog runs quickly across the green field"


def rng(seed=0):
    return np.random.default_rng([seed, 0, 0])


def write_wordnet(folder: Path, synsets: dict[str, list[list[str]]]) -> Path:
    """A tiny WordNet database in the real file format: data lines at byte offsets, sorted index."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "  1 This is a tiny test database in the WordNet 3.0 format.\n  2 \n"
    for pos in ("noun", "verb", "adj", "adv"):
        lines, index = [header], {}
        offset = len(header.encode())
        for words in synsets.get(pos, []):
            body = f" 00 {pos[0]} {len(words):02x} " + " ".join(f"{w} 0" for w in words) + " 000 | gloss\n"
            line = f"{offset:08d}{body}"
            lines.append(line)
            for w in words:
                index.setdefault(w.split("(")[0].lower(), []).append(offset)
            offset += len(line.encode())
        (folder / f"data.{pos}").write_text("".join(lines), encoding="utf-8")
        entries = [f"{lemma} {pos[0]} {len(offs)} 1 @ {len(offs)} 0 " + " ".join(f"{o:08d}" for o in offs) + "  \n"
                   for lemma, offs in sorted(index.items())]
        (folder / f"index.{pos}").write_text(header + "".join(entries), encoding="utf-8")
    return folder


@pytest.fixture
def wordnet_dir(tmp_path):
    return write_wordnet(tmp_path / "wn", {
        "adj": [["happy", "glad", "felicitous"], ["green", "verdant"], ["ready_to_hand(p)", "handy"]],
        "noun": [["dog", "domestic_dog", "canis_familiaris"], ["field", "meadow"]],
        "adv": [["quickly", "rapidly", "speedily"]],
        "verb": [["run", "go"]],
    })


def test_wordnet_reader_finds_synonyms_across_parts_of_speech(wordnet_dir):
    wn = WordNet(wordnet_dir)
    assert wn.synonyms("happy") == ["glad", "felicitous"]
    assert wn.synonyms("dog") == ["domestic dog", "canis familiaris"]
    assert wn.synonyms("handy") == ["ready to hand"]
    assert wn.synonyms("ready to hand") == ["handy"]
    assert wn.synonyms("zebra") == [] and wn.synonyms("a") == [] and wn.synonyms("zzzz") == []


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.noun").is_file(),
                    reason="WordNet 3.0 data not installed (Debian: apt-get install wordnet-base)")
def test_wordnet_reader_on_the_installed_database():
    wn = WordNet()
    assert {"auto", "automobile", "motorcar"} <= set(wn.synonyms("car"))
    assert "glad" in wn.synonyms("happy")


def test_wordnet_missing_data_is_a_clear_config_error(host, tmp_path):
    with pytest.raises(ConfigError, match=r"WordNet data not found in .*apt-get install wordnet-base"):
        host.make("augmenter", "text.synonym", {"wordnet": True, "wordnet_path": str(tmp_path)})


def test_thesaurus_files_tsv_and_json(tmp_path):
    (tmp_path / "t.tsv").write_text("# comment\nhappy\tglad\tcheerful\nDog\thound\n", encoding="utf-8")
    (tmp_path / "t.json").write_text(json.dumps({"happy": ["glad", "happy"]}), encoding="utf-8")
    assert Thesaurus.load(tmp_path / "t.tsv").synonyms("dog") == ["hound"]
    assert Thesaurus.load(tmp_path / "t.tsv").synonyms("happy") == ["glad", "cheerful"]
    assert Thesaurus.load(tmp_path / "t.json").synonyms("happy") == ["glad"]
    (tmp_path / "bad.tsv").write_text("happy glad\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.tsv:1: a thesaurus line is word<TAB>synonym"):
        Thesaurus.load(tmp_path / "bad.tsv")
    (tmp_path / "bad.json").write_text('{"happy": "glad"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="maps each word to a list"):
        Thesaurus.load(tmp_path / "bad.json")


def test_synonym_replacement_keeps_case_and_punctuation(host, wordnet_dir):
    aug = host.make("augmenter", "text.synonym",
                    {"wordnet": True, "wordnet_path": str(wordnet_dir), "p": 1.0, "alpha": 1.0})
    out = aug.augment({"text": "Happy, dog!", "label": "x"}, rng())
    assert re.fullmatch(r"(Glad|Felicitous), (domestic dog|canis familiaris)!", out["text"]), out
    assert out["label"] == "x"


def test_synonym_replacement_from_a_thesaurus_is_seeded(host, tmp_path):
    (tmp_path / "t.tsv").write_text("happy\tglad\tjoyful\tcheerful\nfield\tmeadow\tpasture\n", encoding="utf-8")
    aug = host.make("augmenter", "text.synonym", {"thesaurus": str(tmp_path / "t.tsv"), "p": 1.0, "alpha": 0.5})
    record = {"text": SENTENCE}
    outs = {aug.augment(dict(record), rng(s))["text"] for s in range(20)}
    assert aug.augment(dict(record), rng(3)) == aug.augment(dict(record), rng(3))
    assert len(outs) > 2
    assert all(o != SENTENCE for o in outs)
    assert record == {"text": SENTENCE}, "the input record is not modified in place"


def test_synonym_replacement_needs_a_source(host):
    with pytest.raises(ConfigError, match="needs a synonym source"):
        host.make("augmenter", "text.synonym")


def test_synonym_thesaurus_path_must_exist(host, tmp_path):
    with pytest.raises(ConfigError, match="thesaurus file not found"):
        host.make("augmenter", "text.synonym", {"thesaurus": str(tmp_path / "missing.tsv")})


def test_random_swap_permutes_words(host):
    aug = host.make("augmenter", "text.random_swap", {"p": 1.0, "alpha": 0.3})
    out = aug.augment({"text": SENTENCE}, rng())["text"]
    assert out != SENTENCE and sorted(out.split()) == sorted(SENTENCE.split())


def test_random_deletion_deletes_some_words_and_keeps_at_least_one(host):
    aug = host.make("augmenter", "text.random_deletion", {"p": 1.0, "alpha": 0.3})
    out = aug.augment({"text": SENTENCE}, rng())["text"].split()
    assert 0 < len(out) < len(SENTENCE.split())
    assert all(w in SENTENCE.split() for w in out)
    everything = host.make("augmenter", "text.random_deletion", {"p": 1.0, "alpha": 1.0})
    assert len(everything.augment({"text": SENTENCE}, rng())["text"].split()) == 1


def test_random_insertion_inserts_synonyms_or_copies(host, wordnet_dir):
    copies = host.make("augmenter", "text.random_insertion", {"p": 1.0, "alpha": 0.2})
    out = copies.augment({"text": SENTENCE}, rng())["text"].split()
    assert len(out) > len(SENTENCE.split()) and set(out) <= set(SENTENCE.split())
    synonyms = host.make("augmenter", "text.random_insertion",
                         {"p": 1.0, "alpha": 1.0, "wordnet": True, "wordnet_path": str(wordnet_dir)})
    out = synonyms.augment({"text": "happy dog"}, rng(1))["text"]
    added = set(out.split()) - {"happy", "dog"}
    assert added and added <= {"glad", "felicitous", "domestic", "canis", "familiaris"}


def test_probability_zero_leaves_records_alone(host):
    for name in ("text.random_swap", "text.random_deletion", "text.random_insertion"):
        aug = host.make("augmenter", name, {"p": 0.0})
        assert aug.augment({"text": SENTENCE}, rng())["text"] == SENTENCE


def test_probability_p_is_the_share_of_records_changed(host):
    aug = host.make("augmenter", "text.random_swap", {"p": 0.3})
    changed = sum(aug.augment({"text": SENTENCE}, rng(s))["text"] != SENTENCE for s in range(400))
    assert 80 < changed < 160


def test_augmenters_ignore_records_without_text(host):
    aug = host.make("augmenter", "text.random_swap", {"p": 1.0})
    assert aug.augment({"ids": [1, 2]}, rng()) == {"ids": [1, 2]}


@pytest.fixture
def translator_module(tmp_path, monkeypatch):
    """An importable module with a fake translator and a factory loading a 'local model'."""
    (tmp_path / "fake_mt.py").write_text(textwrap.dedent("""
        from pathlib import Path
        CALLS = []

        def translate(text, source, target):
            CALLS.append((source, target))
            return text.upper() if target != "en" else text.lower() + " (paraphrased)"

        def load(model_path):
            prefix = Path(model_path, "prefix.txt").read_text().strip()
            return lambda text, source, target: f"{prefix}:{text}" if target == "en" else text

        def broken(text, source, target):
            return 42
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fake_mt"
    sys.modules.pop("fake_mt", None)


def test_back_translation_through_a_user_translator(host, translator_module):
    aug = host.make("augmenter", "text.back_translation", {"translator": "fake_mt:translate", "p": 1.0,
                                                            "pivot_lang": "fr"})
    assert aug.augment({"text": "Hello There"}, rng()) == {"text": "hello there (paraphrased)"}
    assert sys.modules["fake_mt"].CALLS == [("en", "fr"), ("fr", "en")]


def test_back_translation_with_a_local_model_path(host, translator_module, tmp_path):
    model_dir = tmp_path / "opus-mt-local"
    model_dir.mkdir()
    (model_dir / "prefix.txt").write_text("local", encoding="utf-8")
    aug = host.make("augmenter", "text.back_translation",
                    {"translator": "fake_mt:load", "model_path": str(model_dir), "p": 1.0})
    assert aug.augment({"text": "hi"}, rng())["text"] == "local:hi"


def test_back_translation_without_a_translator_is_a_clear_error(host, tmp_path):
    with pytest.raises(ConfigError, match="needs 'translator: package.module:function'.*never downloads"):
        host.make("augmenter", "text.back_translation")
    with pytest.raises(ConfigError, match="model_path .* needs one too"):
        host.make("augmenter", "text.back_translation", {"model_path": str(tmp_path)})


def test_back_translation_bad_translators(host, translator_module):
    with pytest.raises(ConfigError, match="must look like 'package.module:function'"):
        host.make("augmenter", "text.back_translation", {"translator": "fake_mt.translate"})
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        host.make("augmenter", "text.back_translation", {"translator": "no_such_module_xyz:f"})
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        host.make("augmenter", "text.back_translation", {"translator": "fake_mt:missing"})
    from privet import DataError

    aug = host.make("augmenter", "text.back_translation", {"translator": "fake_mt:broken", "p": 1.0})
    with pytest.raises(DataError, match="returned a int, not a string"):
        aug.augment({"text": "x"}, rng())


# --- part of speech: tags from text.pos_tag restrict WordNet synonyms ---------------------

@pytest.fixture
def ambiguous_wordnet(tmp_path):
    """"dog" is a noun (hound) and a verb (tag, chase), as in WordNet 3.0."""
    return write_wordnet(tmp_path / "wn-pos", {
        "noun": [["dog", "hound"], ["the", "vitamin_the"]],
        "verb": [["dog", "tag", "chase"]],
    })


def tagged(text, tokens, tags):
    return {"text": text, "tokens": tokens, "pos": tags}


def test_synonyms_keep_the_tagged_part_of_speech(host, ambiguous_wordnet):
    aug = host.make("augmenter", "text.synonym",
                    {"wordnet": True, "wordnet_path": str(ambiguous_wordnet), "p": 1.0, "alpha": 1.0})
    noun = tagged("The dog, barks", ["The", "dog", ",", "barks"], ["DET", "NOUN", "PUNCT", "VERB"])
    verb = tagged("they dog him", ["they", "dog", "him"], ["PRP", "VBP", "PRP"])
    nouns = {aug.augment(noun, rng(s))["text"] for s in range(30)}
    verbs = {aug.augment(verb, rng(s))["text"] for s in range(30)}
    assert nouns == {"The hound, barks"}  # a determiner gets no WordNet synonym ("vitamin the")
    assert verbs == {"they tag him", "they chase him"}
    untagged = {aug.augment({"text": "they dog him"}, rng(s))["text"] for s in range(30)}
    assert untagged == {"they hound him", "they tag him", "they chase him"}


def test_tags_that_no_longer_fit_the_text_are_ignored(host, ambiguous_wordnet):
    from privet_text.augmenters import word_pos

    assert word_pos("The dog, barks", ["The", "dog", ",", "barks"], ["DT", "NN", ",", "VBZ"]) == [
        "other", "noun", "verb"]
    assert word_pos("they dog him", ["they", "dog"], ["PRP", "VBP"]) is None  # text grew
    assert word_pos("him dog they", ["they", "dog", "him"], ["PRP", "VBP", "PRP"]) is None  # swapped
    assert word_pos("they dog", ["they", "dog", "him"], ["PRP", "VBP", "PRP"]) is None  # text shrank
    assert word_pos("a b", ["a", "b"], ["DT"]) is None and word_pos("a", "a", "DT") is None
    aug = host.make("augmenter", "text.synonym",
                    {"wordnet": True, "wordnet_path": str(ambiguous_wordnet), "p": 1.0, "alpha": 1.0})
    stale = tagged("they dog him now", ["they", "dog", "him"], ["PRP", "VBP", "PRP"])
    assert {aug.augment(stale, rng(s))["text"] for s in range(30)} == {
        "they hound him now", "they tag him now", "they chase him now"}


def test_random_insertion_inserts_synonyms_of_the_tagged_part_of_speech(host, ambiguous_wordnet):
    aug = host.make("augmenter", "text.random_insertion",
                    {"wordnet": True, "wordnet_path": str(ambiguous_wordnet), "p": 1.0, "alpha": 1.0})
    record = tagged("dog dog", ["dog", "dog"], ["NN", "NNS"])
    inserted = set()
    for s in range(30):
        inserted |= set(aug.augment(record, rng(s))["text"].split())
    assert inserted == {"dog", "hound"}


# --- back-translation with local MarianMT folders (tiny random weights, built here) -------

@pytest.fixture(scope="module")
def marian_folders(tmp_path_factory):
    """Two tiny random-weight MarianMT models with a word-level tokenizer, saved as a user
    would save real ones: transformers' own trick for fast tests (no download)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "<pad> </s> <unk> the dog runs fast a cat sleeps der hund läuft schnell eine katze".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                     eos_token="</s>", unk_token="<unk>")
    config = transformers.MarianConfig(
        vocab_size=len(words), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    folders = []
    for seed, name in enumerate(("opus-mt-en-de", "opus-mt-de-en")):
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp("marian") / name
        transformers.MarianMTModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


def test_back_translation_through_local_marian_folders_is_seeded(host, marian_folders):
    import torch

    forward, backward = marian_folders
    options = {"forward_model": str(forward), "backward_model": str(backward), "p": 1.0,
               "sample": True, "max_new_tokens": 6}
    aug = host.make("augmenter", "text.back_translation", options)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    outs = [aug.augment({"text": "the dog runs fast", "id": 7}, rng(s)) for s in range(6)]
    assert torch.equal(torch.rand(3), before)  # the process's own torch RNG was not advanced
    assert all(isinstance(o["text"], str) and o["id"] == 7 for o in outs)
    assert all(set(o["text"].split()) <= set("the dog runs fast a cat sleeps der hund läuft schnell "
                                              "eine katze".split()) for o in outs)
    again = host.make("augmenter", "text.back_translation", options)
    assert [again.augment({"text": "the dog runs fast"}, rng(s))["text"] for s in range(6)] == [
        o["text"] for o in outs]  # same seeds, same paraphrases, in a fresh instance
    assert len({o["text"] for o in outs}) > 1  # sampling: different paraphrases per seed


def test_back_translation_model_folders_are_checked_before_training(host, marian_folders, tmp_path):
    forward, _ = marian_folders
    with pytest.raises(ConfigError, match=r"needs both 'forward_model'.*and 'backward_model'"):
        host.make("augmenter", "text.back_translation", {"forward_model": str(forward)})
    with pytest.raises(ConfigError, match=r"backward_model: .* is not a local translation model folder "
                                          r"\(no config.json\).*never downloads"):
        host.make("augmenter", "text.back_translation",
                  {"forward_model": str(forward), "backward_model": str(tmp_path)})
    with pytest.raises(ConfigError, match="either 'translator' or 'forward_model'"):
        host.make("augmenter", "text.back_translation",
                  {"translator": "os:getcwd", "forward_model": str(forward), "backward_model": str(forward)})
