"""A bad federation file is one line naming the key and its line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from privet.cli import main
from privet.errors import ConfigError
from privet.federate.config import load_federation


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "a.yaml").write_text("data: {source: jsonl}\n")
    (tmp_path / "b.yaml").write_text("data: {source: jsonl}\n")
    path = tmp_path / "federation.yaml"
    path.write_text(text)
    return path


GOOD = """\
name: fed
rounds: 2
clients:
  - {name: a, pipeline: a.yaml}
  - {name: b, pipeline: b.yaml, overrides: [train.batch_size=8]}
"""


def test_a_good_file_loads_with_defaults(tmp_path):
    fed = load_federation(write(tmp_path, GOOD))
    c = fed.config
    assert (c.rounds, c.local_epochs, c.local_steps, c.aggregation, c.mu) == (2, 1, None, "fedavg", 0.0)
    assert [x.name for x in c.clients] == ["a", "b"]
    assert fed.pipeline_path(c.clients[1]) == tmp_path / "b.yaml"
    assert c.clients[1].overrides == ["train.batch_size=8"]


@pytest.mark.parametrize("text, where, words", [
    (GOOD.replace("rounds: 2", "round: 2"), ":2: ", "'round' (did you mean 'rounds'?)"),
    (GOOD.replace("rounds: 2", "rounds: 0"), ":2: rounds:", "at least 1"),
    (GOOD.replace("pipeline: b.yaml", "pipeline: missing.yaml"), ":5: clients.1.pipeline:", "not found"),
    (GOOD.replace("name: b,", "name: a,"), ":5: clients.1.name:", "used twice"),
    (GOOD + "aggregation: fedprox\n", ":6: mu:", "fedprox needs mu > 0"),
    (GOOD + "mu: 0.1\n", ":6: mu:", "set aggregation: fedprox"),
    (GOOD + "aggregation: fedsgd\n", ":6: aggregation:", "'fedavg', 'fedprox'"),
    (GOOD.replace("name: a,", "name: ../a,"), ":4: clients.0.name:", "plain folder name"),
])
def test_a_bad_key_names_its_path_and_line(tmp_path, text, where, words):
    with pytest.raises(ConfigError) as info:
        load_federation(write(tmp_path, text))
    message = str(info.value)
    assert where in message and words in message, message


def test_the_launcher_prints_one_line_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("rounds: 2", "rounds: two"))
    with pytest.raises(SystemExit) as exit:
        main(["federate", str(path)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "federation.yaml:2: rounds: expected an integer" in err, err
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_the_launcher_needs_a_file_or_resume(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["federate"])
    assert exit.value.code == 2
    assert "--resume RUN_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["federate", "--resume", str(tmp_path)])
    assert exit.value.code == 2
    assert "not a federation run folder" in capsys.readouterr().err


def test_a_bad_client_pipeline_is_named_before_anything_starts(tmp_path, capsys, monkeypatch):
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from federate_support import make_federation

    monkeypatch.setenv("PRIVET_LOAD_PLUGINS", "")
    file = make_federation(tmp_path, rounds=1)
    bad = yaml.safe_load((tmp_path / "b" / "pipeline.yaml").read_text())
    bad["train"]["batch_size"] = 0
    (tmp_path / "b" / "pipeline.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as exit:
        main(["federate", str(file)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "b/pipeline.yaml:" in err and "train.batch_size" in err, err
    assert not (tmp_path / "runs" / "fed").exists()
