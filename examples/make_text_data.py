"""Write small synthetic text corpora for the text examples (no network, seeded).

    python examples/make_text_data.py            # writes examples/data/text/
    python examples/make_text_data.py --out DIR

``reviews.jsonl``: labelled product reviews (positive / negative / neutral) with the
mess real data has: HTML, emails, phone and card numbers, duplicates, a malformed line,
an empty text. ``stories.jsonl``: short unlabelled stories for ``text.gpt``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LEXICON = {
    "positive": ["excellent", "great", "love", "wonderful", "perfect", "fantastic", "reliable", "happy"],
    "negative": ["terrible", "broken", "awful", "refund", "disappointed", "useless", "worst", "faulty"],
    "neutral": ["okay", "average", "arrived", "standard", "fine", "expected", "normal", "decent"],
}
PRODUCTS = ["kettle", "headphones", "backpack", "lamp", "keyboard", "blender", "jacket", "phone case"]
FRAMES = [
    "The {p} is {w}, and the delivery was {w2}.",
    "I bought this {p} last week. {W} overall, {w2} build.",
    "<p>My {p} feels <b>{w}</b>.</p><p>Packaging: {w2}.</p>",
    "Honestly {w}. The {p} does what it says, {w2} value for money.",
    "Second {p} from this shop: {w} again &amp; {w2} support.",
]
PII = [
    " Contact me at {name}@example.com.",
    " Call +44 20 7946 {n4} if you have questions.",
    " Paid with card 4111 1111 1111 1111.",
    "",
    "",
    "",
]
NAMES = ["anna", "ben", "chen.li", "dmitri", "eva_m", "farah"]
STORY_PARTS = {
    "who": ["the old fisherman", "a curious fox", "the young baker", "a tired robot", "the lighthouse keeper"],
    "did": ["found", "painted", "carried", "lost", "repaired"],
    "what": ["a silver key", "the broken boat", "a basket of bread", "the map of the island", "a lantern"],
    "then": ["and walked home slowly.", "and told nobody.", "before the storm came.", "and smiled.",
             "while the town was asleep."],
}


def review(rng: random.Random) -> dict:
    label = rng.choice(sorted(LEXICON))
    words = LEXICON[label]
    text = rng.choice(FRAMES).format(p=rng.choice(PRODUCTS), w=rng.choice(words),
                                     W=rng.choice(words).capitalize(), w2=rng.choice(words))
    text += rng.choice(PII).format(name=rng.choice(NAMES), n4=f"{rng.randrange(10000):04d}")
    return {"text": text, "label": label}


def story(rng: random.Random) -> dict:
    sentences = [f"{rng.choice(STORY_PARTS['who']).capitalize()} {rng.choice(STORY_PARTS['did'])} "
                 f"{rng.choice(STORY_PARTS['what'])} {rng.choice(STORY_PARTS['then'])}"
                 for _ in range(rng.randint(2, 4))]
    return {"text": " ".join(sentences)}


def write(out: Path, reviews: int = 1500, stories: int = 800, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = [review(rng) for _ in range(reviews)]
    rows += rng.sample(rows, k=reviews // 50)  # exact duplicates, for text.dedupe to find
    rng.shuffle(rows)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(len(lines) // 2, '{"text": "this line was cut off')  # malformed JSON
    lines.insert(len(lines) // 3, json.dumps({"text": "   ", "label": "neutral"}))  # empty text
    paths = [out / "reviews.jsonl", out / "stories.jsonl"]
    paths[0].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths[1].write_text("".join(json.dumps(story(rng)) + "\n" for _ in range(stories)), encoding="utf-8")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data" / "text")
    parser.add_argument("--reviews", type=int, default=1500)
    parser.add_argument("--stories", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write(args.out, args.reviews, args.stories, args.seed):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
