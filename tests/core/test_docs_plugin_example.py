"""The complete plugin of docs/writing-plugins.md goes run -> export -> predict as written.

Plugin authors copy that page. Its blocks marked ``<!-- predict-example: PATH -->`` (the
plugin, the pipeline, sample data, the commands and the predictions they give) are
written into a temp project and the commands are run with the real launcher, so an
example that no longer works, or a method that predict needs and the page leaves out,
fails here rather than in a user's first ``privet predict``.
"""

from __future__ import annotations

import json
import random
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

import privet

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "writing-plugins.md"
BLOCK = re.compile(r"<!-- predict-example: (\S+) -->\n```\w*\n(.*?)```", flags=re.S)
FILES = {"plugins/churn.py", "churn.yaml", "customers.jsonl", "new.jsonl", "commands.sh",
         "predictions.jsonl"}


def doc_blocks() -> dict[str, str]:
    """PATH -> content of every block marked as part of the predict example."""
    found = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    blocks = dict(found)
    assert len(blocks) == len(found), "a predict-example path is used twice"
    return blocks


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def commands(script: str) -> list[list[str]]:
    """Each non-blank line of the documented shell block, as argv (comments dropped)."""
    argvs = [shlex.split(line, comments=True) for line in script.splitlines()]
    argvs = [argv for argv in argvs if argv]
    for argv in argvs:
        assert argv[0] == "privet", f"the example's commands must be privet commands: {argv}"
    return argvs


def subcommand(argv: list[str]) -> str:
    """``predict`` for ``privet --plugin-dir plugins predict ...``: the first bare word."""
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("--plugin-dir", "-p") else rest[1:]
    return rest[0] if rest else ""


def churns(tenure: float, spend: float) -> bool:
    """The rule behind the example's labels: short tenure for what they spend."""
    return tenure - spend / 20 < 12


def training_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        tenure, spend = round(rng.uniform(0, 60), 1), round(rng.uniform(0, 300), 1)
        label = "churn" if churns(tenure, spend) else "stay"
        lines.append(json.dumps({"id": f"g-{i:03d}", "tenure": tenure, "spend": spend,
                                 "label": label}))
    return lines


def write_project(root: Path, blocks: dict[str, str]) -> None:
    for rel, content in blocks.items():
        if rel in ("commands.sh", "predictions.jsonl"):
            continue  # what the test runs and expects, not input files
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content, encoding="utf-8")
    sample = blocks["customers.jsonl"].splitlines()
    (root / "customers.jsonl").write_text("\n".join(sample + training_lines(200)) + "\n",
                                          encoding="utf-8")


def test_predict_example_blocks_are_complete_and_consistent():
    blocks = doc_blocks()

    assert set(blocks) == FILES
    assert [subcommand(a) for a in commands(blocks["commands.sh"])][-3:] == \
        ["run", "export", "predict"]
    for record in jsonl(blocks["customers.jsonl"]):  # the doc's samples follow the rule
        assert record["label"] == ("churn" if churns(record["tenure"], record["spend"]) else "stay")
    inputs, outputs = jsonl(blocks["new.jsonl"]), jsonl(blocks["predictions.jsonl"])
    assert len(outputs) == len(inputs)
    assert all("label" not in record for record in inputs), "predict input has no target"


def test_doc_names_every_method_the_engine_and_predict_call():
    """A method with a default in privet.Source / Cleaner / Model is one an author may need."""
    text = DOC.read_text(encoding="utf-8")
    internal = {"kind", "name", "Options"}
    missing = []
    for cls in (privet.Source, privet.Cleaner, privet.Model):
        names = {n for klass in cls.__mro__ if klass is not object
                 for n in vars(klass) if not n.startswith("_") and n not in internal}
        missing += [f"{cls.__name__}.{n}" for n in sorted(names)
                    if f"`{n}" not in text and f"{cls.__name__}.{n}" not in text]

    assert not missing, f"docs/writing-plugins.md does not mention {missing}"


def check_entry(got: dict[str, Any], want: dict[str, Any], labels: list[str]) -> None:
    """One prediction line has the documented shape (values of errors exactly)."""
    assert (got["location"], got.get("id")) == (want["location"], want.get("id"))
    if "error" in want:
        assert got == want
        return
    assert set(got) == set(want)
    probs = got["probabilities"]
    assert len(probs) == len(labels) == len(want["probabilities"])
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probs)
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert got["label"] == labels[probs.index(max(probs))] == want["label"]


@pytest.mark.slow
def test_predict_example_runs_exports_and_predicts_as_documented(tmp_path, privet_cli):
    blocks = doc_blocks()
    write_project(tmp_path, blocks)

    stderr = {}
    for argv in commands(blocks["commands.sh"]):
        result = privet_cli(*argv[1:], installed=False, timeout=400)
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr[-2000:]}"
        stderr[subcommand(argv)] = result.stderr

    predictions = jsonl((tmp_path / "predictions.jsonl").read_text(encoding="utf-8"))
    expected = jsonl(blocks["predictions.jsonl"])
    assert len(predictions) == len(jsonl(blocks["new.jsonl"]))  # one line per input record
    labels = json.loads((tmp_path / "runs/churn/export/labels.json").read_text(encoding="utf-8"))
    assert labels == ["churn", "stay"]
    for got, want in zip(predictions, expected):
        check_entry(got, want, labels)
    report = json.loads((tmp_path / "runs/churn/report.json").read_text(encoding="utf-8"))
    assert report["final"]["val/accuracy"] > 0.8  # it learned the rule, in 2 epochs
    assert "predicted 2 of 3 records with onnx; errors: not_a_number: 1" in stderr["predict"]
