"""Fixtures of the privet-text tests: a plugin host with the text plugin, and small corpora
written by the tests themselves (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

# The fixtures plugin authors get from privet.testing.
from privet.testing import privet_host, run_pipeline  # noqa: F401
from privet_text import plugin

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One xdist worker per core: more intra-op threads only spin against the other worker
    # (measured here: a small transformer step 5-20x slower with 2 threads under -n 2).
    torch.set_num_threads(1)

POSITIVE = "great wonderful excellent amazing lovely superb delightful brilliant".split()
NEGATIVE = "terrible awful horrible dreadful boring poor dismal clumsy".split()
FILLER = ("the movie was and i it this film story acting plot really quite very a of "
          "to with scene cast music ending").split()


@pytest.fixture
def host(privet_host):  # noqa: F811 - the fixture imported above
    """``privet.testing``'s host with the text plugin registered (as its entry point would)."""
    privet_host.register_plugin(plugin, "text")
    return privet_host


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """A separable two-class corpus: each text holds two words from its class' lexicon."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(FILLER) for _ in range(10)]
        words += [rng.choice(POSITIVE if label == "pos" else NEGATIVE) for _ in range(2)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def story_rows(n: int, seed: int = 1) -> list[dict]:
    """A small corpus with structure a language model can learn (subject verb object.)."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the bird", "my friend", "the teacher", "an old man"]
    verbs = ["sees", "likes", "finds", "follows", "helps", "draws"]
    objects = ["the ball", "a tree", "the house", "the river", "a book", "the moon"]
    return [{"text": " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
                              for _ in range(3))} for _ in range(n)]


@pytest.fixture
def corpora():
    """Helpers that write corpora: ``corpora.jsonl(path, rows)``, ``.sentiment(n)``, ``.stories(n)``."""

    class Corpora:
        jsonl = staticmethod(write_jsonl)
        sentiment = staticmethod(sentiment_rows)
        stories = staticmethod(story_rows)

    return Corpora
