"""The Model methods plugins inherit for export and prediction, and the default input reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import privet
from privet import BadRecord, UsageError
from privet.export.inputs import read_records


class Plain(privet.Model):
    """The smallest model: only the abstract methods, so every export default shows."""

    def build(self):
        from torch import nn

        return nn.Linear(2, 3)

    def encode(self, record):
        return record["x"]

    def step(self, module, batch):
        return privet.StepOutput(module(batch).sum(), 1)


class Named(Plain):
    def class_names(self):
        return ["cat", "dog", "owl"]


class Regressor(Plain):
    task = "regression"


class LanguageModel(Plain):
    task = "lm"


def test_classification_postprocess_gives_softmax_probabilities_and_the_argmax_label():
    import numpy as np

    logits = np.array([[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]], np.float32)
    rows = Plain().postprocess([logits], [{}, {}])
    assert rows[0] == {"label": 0, "probabilities": [0.333333, 0.333333, 0.333333]}
    assert rows[1]["label"] == 1
    assert sum(rows[1]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    expected = np.exp([1.0, 3.0, 0.0]) / np.exp([1.0, 3.0, 0.0]).sum()
    assert rows[1]["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert Named().postprocess([logits], [{}, {}])[1]["label"] == "dog"


def test_regression_postprocess_gives_numbers_or_lists():
    import numpy as np

    assert Regressor().postprocess([np.array([[1.5], [-2.0]])], [{}, {}]) == [
        {"prediction": 1.5}, {"prediction": -2.0}]
    assert Regressor().postprocess([np.array([[1.0, 2.0]])], [{}]) == [{"prediction": [1.0, 2.0]}]


def test_other_tasks_get_their_raw_outputs():
    import numpy as np

    rows = LanguageModel().postprocess([np.array([[1, 2], [3, 4]]), np.array([7, 8])], [{}, {}])
    assert rows == [{"outputs": [[1, 2], 7]}, {"outputs": [[3, 4], 8]}]


def test_bundle_files_writes_labels_json_only_for_named_classes(tmp_path):
    assert Plain().bundle_files(tmp_path) == {}
    assert list(tmp_path.iterdir()) == []
    assert Named().bundle_files(tmp_path) == {"labels": "labels.json"}
    assert json.loads((tmp_path / "labels.json").read_text()) == ["cat", "dog", "owl"]


def test_dynamic_axes_default_to_a_batch_axis_on_every_input_and_output():
    assert Plain().dynamic_axes() == {"input": {0: "batch"}, "output": {0: "batch"}}


def test_encode_inputs_defaults_to_encode_and_predict_batch_chains_the_steps():
    import numpy as np
    import torch

    class Model(Plain):
        def example_inputs(self, batch):
            return (batch,)

    model = Model()
    assert model.encode_inputs({"x": [1.0, 2.0]}) == [1.0, 2.0]
    seen = {}

    def run(feed):
        seen.update(feed)
        return [np.array([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])]

    items = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    rows = model.predict_batch(run, [{}, {}], items)
    assert list(seen) == ["input"]
    np.testing.assert_array_equal(seen["input"], [[1.0, 2.0], [3.0, 4.0]])
    assert [r["label"] for r in rows] == [1, 0]


# --- reading inputs ----------------------------------------------------------------------------


def test_jsonl_lines_come_with_their_line_numbers_and_bad_lines_as_bad_records(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n"text"\n\xff\xfe\n{"a": 2}\n')
    got = list(Plain().read_inputs(path))
    assert got[0] == ("in.jsonl:1", {"a": 1})
    assert [(loc, r.reason) for loc, r in got[1:4]] == [
        ("in.jsonl:3", "malformed_json"), ("in.jsonl:4", "not_an_object"),
        ("in.jsonl:5", "invalid_utf8")]
    assert all(isinstance(r, BadRecord) and r.location == loc for loc, r in got[1:4])
    assert got[4] == ("in.jsonl:6", {"a": 2})


def test_csv_rows_parse_numbers_and_report_ragged_rows(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("name,n,f\nann,3,1.5\nbob,x\n,,\n", encoding="utf-8")
    got = list(read_records(path))
    assert got[0] == ("rows.csv:2", {"name": "ann", "n": 3, "f": 1.5})
    assert got[1][0] == "rows.csv:3" and got[1][1].reason == "wrong_column_count"
    assert got[2] == ("rows.csv:4", {"name": None, "n": None, "f": None})


def test_a_folder_is_read_file_by_file_with_relative_locations(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.jsonl").write_text('{"k": 1}\n', encoding="utf-8")
    with gzip.open(tmp_path / "b" / "c.jsonl.gz", "wt") as fh:
        fh.write('{"k": 2}\n')
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    got = list(read_records(tmp_path))
    assert got == [("a.jsonl:1", {"k": 1}), (str(Path("b") / "c.jsonl.gz") + ":1", {"k": 2})]


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing.jsonl", "input not found"),
    (lambda p: p, "no .jsonl or .csv files"),
    (lambda p: (p / "x.txt", (p / "x.txt").write_text("hi"))[0], "cannot read this kind of file"),
])
def test_unreadable_inputs_are_usage_errors(tmp_path, setup, message):
    with pytest.raises(UsageError, match=message):
        list(read_records(setup(tmp_path)))
