"""text.gpt and text.classifier as components: packing, masks, losses, state, generation."""

from __future__ import annotations

import json

import pytest
import torch

from privet import ConfigError, DropRecord, TrainingError
from privet_text.networks import GPT, TextClassifierNet, sample_next

TINY_GPT = {"layers": 1, "hidden": 32, "heads": 2, "context_length": 8,
            "tokenizer": {"vocab_size": 120, "min_frequency": 1}}
TINY_CLF = {"layers": 1, "hidden": 32, "heads": 2, "max_length": 16,
            "tokenizer": {"vocab_size": 120, "min_frequency": 1}}


@pytest.fixture
def gpt(host, corpora):
    model = host.make("model", "text.gpt", TINY_GPT)
    model.fit(corpora.stories(50))
    return model


def test_packing_cuts_overlapping_blocks_that_predict_every_token_once(gpt, corpora):
    docs = corpora.stories(20, seed=5)
    blocks = [b["ids"] for b in gpt.examples(docs, "train")]
    stream = []
    for d in docs:
        stream += gpt.tokenizer.encode(d["text"]) + [gpt.tokenizer.eos_id]
    size = TINY_GPT["context_length"] + 1
    assert all(len(b) == size for b in blocks), "no padding: every block is full"
    assert len(blocks) == (len(stream) - 1) // (size - 1)
    predicted = [t for b in blocks for t in b[1:]]
    assert predicted == stream[1: 1 + len(predicted)], "targets are the stream, each token once"
    assert all(a[-1] == b[0] for a, b in zip(blocks, blocks[1:])), "blocks overlap by one token"
    assert stream.count(gpt.tokenizer.eos_id) == len(docs), "documents are joined by end-of-text"


def test_packing_a_split_shorter_than_one_block_gives_one_short_block(gpt):
    blocks = list(gpt.examples([{"text": "the cat"}], "val"))
    assert len(blocks) == 1 and 2 <= len(blocks[0]["ids"]) < TINY_GPT["context_length"] + 1


def test_gpt_step_sums_the_loss_over_predicted_tokens(gpt, corpora):
    module = gpt.build()
    batch = torch.stack([gpt.encode(b) for b in list(gpt.examples(corpora.stories(10), "train"))[:3]])
    out = gpt.step(module, batch)
    assert out.count == 3 * TINY_GPT["context_length"]
    logits = module(batch[:, :-1])
    mean = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    assert torch.allclose(out.loss_sum / out.count, mean, atol=1e-6)
    assert out.predictions is None
    assert gpt.task == "lm"


def test_gpt_is_causal_later_tokens_do_not_change_earlier_logits():
    torch.manual_seed(0)
    module = GPT(50, context_length=10, layers=2, hidden=32, heads=4).eval()
    a = torch.randint(4, 50, (1, 10))
    b = a.clone()
    b[0, 6:] = torch.randint(4, 50, (4,))
    assert torch.allclose(module(a)[0, :6], module(b)[0, :6], atol=1e-6)
    assert not torch.allclose(module(a)[0, 6:], module(b)[0, 6:])


def test_gpt_ties_embeddings_when_asked():
    tied = GPT(40, layers=1, hidden=16, heads=2, tie_embeddings=True)
    untied = GPT(40, layers=1, hidden=16, heads=2, tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 40 * 16


def test_gpt_large_sizes_are_expressible(host):
    model = host.make("model", "text.gpt", {"hidden": 2048, "heads": 32, "layers": 24, "context_length": 2048})
    assert (model.options.hidden, model.options.heads, model.options.layers) == (2048, 32, 24)
    module = GPT(256, context_length=64, layers=1, hidden=1024, heads=16)
    assert module(torch.randint(0, 256, (1, 5))).shape == (1, 5, 256)


def test_gpt_options_are_validated(host):
    with pytest.raises(ConfigError, match=r"hidden \(100\) must be divisible by heads \(3\)"):
        host.make("model", "text.gpt", {"hidden": 100, "heads": 3})
    with pytest.raises(ConfigError, match="dropout"):
        host.make("model", "text.gpt", {"dropout": 1.5})
    with pytest.raises(ConfigError, match="unknown key"):
        host.make("model", "text.gpt", {"tokenizer": {"vocab": 100}})


def test_gpt_generate_streams_a_reproducible_continuation_with_a_seed(gpt):
    torch.manual_seed(0)
    module = gpt.build()
    pieces = list(gpt.generate(module, "the cat", max_new_tokens=12, seed=7))
    one = "".join(pieces)
    assert len(pieces) > 1 and all(pieces)  # streamed piece by piece, only new text
    assert one == "".join(gpt.generate(module, "the cat", max_new_tokens=12, seed=7))
    greedy = "".join(gpt.generate(module, "the cat", max_new_tokens=12, temperature=0))
    assert greedy == "".join(gpt.generate(module, "the cat", max_new_tokens=12, temperature=0))
    # the pieces are the decoded new tokens: the same text the tokenizer gives for them
    tok = gpt._require_tokenizer()
    ids = torch.tensor([[tok.eos_id] + tok.encode("the cat")])
    new = []
    with torch.no_grad():
        for _ in range(12):
            next_id = int(module(ids[:, -gpt.options.context_length:])[0, -1].argmax())
            if next_id == tok.eos_id:
                break
            new.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    assert greedy == tok.decode(new)


def test_gpt_refuses_a_chat_and_an_untrained_model_does_not_generate(gpt, host):
    from privet import UsageError

    module = gpt.build()
    with pytest.raises(UsageError, match="no chat template"):
        list(gpt.generate(module, [{"role": "user", "content": "hi"}]))
    classifier = host.make("model", "text.classifier", {})
    with pytest.raises(UsageError, match="does not generate text"):
        classifier.generate(module, "hi")


def test_state_round_trip_keeps_the_tokenizer(host, gpt):
    state = json.loads(json.dumps(gpt.state_dict()))
    fresh = host.make("model", "text.gpt", TINY_GPT)
    with pytest.raises(TrainingError, match="has no tokenizer"):
        fresh.build()
    fresh.load_state_dict(state)
    assert fresh.tokenizer.encode("the bird helps a tree.") == gpt.tokenizer.encode("the bird helps a tree.")


def test_sample_next_top_k_and_top_p_only_pick_allowed_tokens():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0).item() == 0
    picks = {sample_next(logits, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {0, 1}
    # softmax: 0.70, 0.26, ...: top_p 0.5 keeps token 0 only; 0.8 keeps tokens 0 and 1
    assert {sample_next(logits, top_p=0.5, generator=g).item() for _ in range(100)} == {0}
    assert {sample_next(logits, top_p=0.8, generator=g).item() for _ in range(300)} == {0, 1}


@pytest.fixture
def classifier(host, corpora):
    model = host.make("model", "text.classifier", TINY_CLF)
    model.fit(corpora.sentiment(60))
    return model


def test_classifier_learns_a_sorted_label_map(classifier):
    assert classifier.labels == ["neg", "pos"]
    state = json.loads(json.dumps(classifier.state_dict()))
    assert state["labels"] == ["neg", "pos"] and state["tokenizer"]["kind"] == "bpe"


def test_classifier_needs_two_labels(host):
    model = host.make("model", "text.classifier", TINY_CLF)
    with pytest.raises(ConfigError, match="at least two labels in field 'label'"):
        model.fit([{"text": "a b c", "label": "x"}, {"text": "c d", "label": None}])


def test_classifier_encode_truncates_and_drops_unusable_records(classifier):
    ids, target = classifier.encode({"text": "great " * 40, "label": "pos"})
    assert len(ids) == TINY_CLF["max_length"] and target == 1
    for record, reason in [({"text": "great"}, "missing_label"),
                           ({"text": "great", "label": "meh"}, "unknown_label"),
                           ({"text": "", "label": "pos"}, "empty_text")]:
        with pytest.raises(DropRecord) as info:
            classifier.encode(record)
        assert info.value.reason == reason


def test_classifier_collate_pads_and_masks(classifier):
    items = [classifier.encode({"text": t, "label": "neg"}) for t in ["awful", "the plot was really awful"]]
    batch = classifier.collate(items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, len(items[1][0]))
    assert batch["attention_mask"][0].tolist() == [1] * len(items[0][0]) + [0] * (len(items[1][0]) - len(items[0][0]))
    assert (batch["input_ids"][0][batch["attention_mask"][0] == 0] == 0).all()
    assert batch["labels"].tolist() == [0, 0]


def test_classifier_encode_columns_builds_the_batch_collate_would(classifier, corpora, tmp_path):
    from privet.data.arrow import ArrowShardWriter, ArrowTable

    writer = ArrowShardWriter(tmp_path, "train", shard_rows=7)
    rows = corpora.sentiment(20) + [{"text": "great " * 40, "label": "pos"}]  # truncated
    for row in rows:
        writer.add(row)
    table = ArrowTable(writer.close())
    order = [20, 3, 11, 0, 7, 19]
    fast = classifier.encode_columns(table.columns(order))
    slow = classifier.collate([classifier.encode(r) for r in table.rows(order)])
    assert set(fast) == set(slow)
    for key in slow:
        assert fast[key].dtype == slow[key].dtype and torch.equal(fast[key], slow[key]), key
    assert fast["input_ids"].shape[1] == TINY_CLF["max_length"]


def test_classifier_examples_cache_token_ids_that_give_the_same_batch(classifier, corpora, tmp_path):
    from privet.data.arrow import ArrowShardWriter, ArrowTable

    rows = corpora.sentiment(20) + [{"text": "great " * 40, "label": "pos"}]
    examples = list(classifier.examples(rows, "train"))
    assert [e["text"] for e in examples] == [r["text"] for r in rows]  # one per record, in order
    assert examples[-1]["token_ids"].dtype.name == "int32"
    assert len(examples[-1]["token_ids"]) == TINY_CLF["max_length"]
    plain, cached = ArrowShardWriter(tmp_path / "a", "train", 7), ArrowShardWriter(tmp_path / "b", "train", 7)
    for row, example in zip(rows, examples):
        plain.add(row)
        cached.add(example)
    order = [20, 3, 11, 0, 7, 19]  # rows of three files
    fast = classifier.encode_columns(ArrowTable(cached.close()).columns(order))
    slow = classifier.encode_columns(ArrowTable(plain.close()).columns(order))
    for key in slow:
        assert fast[key].dtype == slow[key].dtype and torch.equal(fast[key], slow[key]), key
    empty = list(classifier.examples([{"text": "", "label": "neg"}], "train"))[0]
    writer = ArrowShardWriter(tmp_path / "c", "train", 7)
    writer.add(empty)
    with pytest.raises(DropRecord):  # encode() then names the reason, empty_text
        classifier.encode_columns(ArrowTable(writer.close()).columns([0]))


def test_classifier_encode_columns_hands_unusable_batches_back_to_encode(classifier, tmp_path):
    from privet.data.arrow import ArrowShardWriter, ArrowTable

    writer = ArrowShardWriter(tmp_path, "train", shard_rows=10)
    for row in [{"text": "great film", "label": "pos"}, {"text": "great film", "label": "meh"},
                {"text": "", "label": "neg"}]:
        writer.add(row)
    table = ArrowTable(writer.close())
    for order in ([0, 1], [0, 2]):
        with pytest.raises(DropRecord):
            classifier.encode_columns(table.columns(order))
    assert classifier.encode_columns(table.columns([0]))["labels"].tolist() == [1]


@pytest.mark.parametrize("arch", ["transformer", "bag"])
def test_classifier_output_does_not_depend_on_padding(arch):
    torch.manual_seed(0)
    net = TextClassifierNet(60, 3, arch=arch, max_length=12, layers=2, hidden=32, heads=4).eval()
    ids = torch.randint(4, 60, (1, 5))
    alone = net(ids, torch.ones(1, 5, dtype=torch.long))
    padded_ids = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 7)], dim=1).long()
    assert torch.allclose(alone, net(padded_ids, padded_mask), atol=1e-5)


def test_classifier_step_returns_logits_and_targets(classifier):
    module = classifier.build()
    batch = classifier.collate([classifier.encode({"text": "great film", "label": "pos"}),
                                classifier.encode({"text": "awful film indeed", "label": "neg"})])
    out = classifier.step(module, batch)
    assert out.count == 2 and out.predictions.shape == (2, 2) and out.targets.tolist() == [1, 0]
    assert classifier.example_inputs(batch)[1] is batch["attention_mask"]
    assert classifier.input_names() == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("name,options,lr", [
    ("text.classifier", {"arch": "bag"}, 1e-2),
    ("text.classifier", {"arch": "transformer"}, 1e-3),
    ("text.gpt", {}, 1e-3),
    ("text.gpt", {"hidden": 768, "heads": 12}, 6e-4),
])
def test_models_supply_the_learning_rate_used_when_the_pipeline_sets_none(host, name, options, lr):
    assert host.make("model", name, options).default_lr() == pytest.approx(lr)
