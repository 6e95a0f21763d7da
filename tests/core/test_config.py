"""The pipeline file: every mistake is one line naming the key path and the file line.

The launcher tests run ``privet validate`` in a subprocess (exit code, no traceback);
the others call ``privet.config`` directly, which is faster and shows the values.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from privet.config import load_config
from privet.errors import ConfigError

GOOD = """\
name: demo
seed: 3
data:
  source:
    name: jsonl
    options:
      paths: [data.jsonl]
  split: {method: random, val: 0.2}
model:
  name: tiny.mlp
  options: {hidden: 4}
train:
  epochs: 2
  batch_size: 8
  optimizer: {name: adamw, lr: 0.01}
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    (tmp_path / "data.jsonl").write_text('{"x": [0.5, -0.5], "label": 0}\n')
    path = tmp_path / "pipeline.yaml"
    path.write_text(GOOD)
    return path


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def _validate(privet_cli, sample_plugins, path: Path, *extra: str):
    return privet_cli("--plugin-dir", str(sample_plugins), "validate", str(path), *extra,
                      installed=False)


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("privet: error: ")
    return lines[0][len("privet: error: "):]


# --- through the launcher -----------------------------------------------------------------


def test_valid_pipeline_passes(privet_cli, sample_plugins, pipeline):
    result = _validate(privet_cli, sample_plugins, pipeline)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{pipeline}: valid (2 components)"


def test_component_name_typo_suggests_the_close_name(privet_cli, sample_plugins, pipeline):
    _edit(pipeline, "name: tiny.mlp", "name: tiny.mpl")

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline))

    assert error.startswith(f"{pipeline}:10: model.name: unknown model 'tiny.mpl'; "
                            f"did you mean 'tiny.mlp'?")
    assert "(installed: tiny.mlp)" in error


def test_wrong_type_names_key_and_line(privet_cli, sample_plugins, pipeline):
    _edit(pipeline, "epochs: 2", "epochs: two")

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline))

    assert error == f"{pipeline}:13: train.epochs: expected an integer, got 'two'"


def test_unknown_key_names_key_and_line_and_suggests(privet_cli, sample_plugins, pipeline):
    _edit(pipeline, "batch_size: 8", "batchsize: 8")

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline))

    assert error.startswith(f"{pipeline}:14: train.batchsize: unknown key(s) 'batchsize' "
                            f"(did you mean 'batch_size'?)")


def test_unknown_component_option_names_key_and_line(privet_cli, sample_plugins, pipeline):
    _edit(pipeline, "options: {hidden: 4}", "options: {hiden: 4}")

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline))

    assert error.startswith(f"{pipeline}:11: model.options.hiden: unknown key(s) 'hiden' "
                            f"(did you mean 'hidden'?)")


def test_missing_data_file_names_key_and_line(privet_cli, sample_plugins, pipeline):
    (pipeline.parent / "data.jsonl").unlink()

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline))

    assert error.startswith(f"{pipeline}:7: data.source.options.paths: file not found: "
                            f"{pipeline.parent / 'data.jsonl'}")


def test_missing_pipeline_file(privet_cli, sample_plugins, tmp_path):
    error = _one_error_line(_validate(privet_cli, sample_plugins, tmp_path / "nope.yaml"))

    assert error == f"{tmp_path / 'nope.yaml'}: pipeline file not found; check the path"


def test_invalid_yaml_names_the_line(privet_cli, sample_plugins, pipeline):
    _edit(pipeline, "  epochs: 2", "  epochs: [2")

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline))

    assert error.startswith(f"{pipeline}:")
    assert "invalid YAML" in error


def test_debug_shows_the_traceback(privet_cli, sample_plugins, pipeline):
    _edit(pipeline, "epochs: 2", "epochs: two")

    result = privet_cli("--debug", "--plugin-dir", str(sample_plugins), "validate", str(pipeline),
                        installed=False)

    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "privet.errors.ConfigError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("privet: error: ")


def test_set_override_is_converted_and_validated(privet_cli, sample_plugins, pipeline):
    ok = _validate(privet_cli, sample_plugins, pipeline, "-s", "train.epochs=3")
    assert ok.returncode == 0, ok.stderr

    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline,
                                      "-s", "train.epochs=many"))
    assert "train.epochs: expected an integer, got 'many'" in error


def test_malformed_override_says_how_to_write_it(privet_cli, sample_plugins, pipeline):
    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline, "-s", "train.epochs"))

    assert error == ("override 'train.epochs' must look like key.path=value "
                     "(e.g. train.epochs=3)")


# --- in process ------------------------------------------------------------------------


def test_overrides_convert_types(pipeline):
    loaded = load_config(pipeline, overrides=["train.epochs=3", "train.optimizer.lr=1e-2",
                                              "train.deterministic=true", "seed=7",
                                              "data.split.val=0.5"])

    train = loaded.config.train
    assert train.epochs == 3 and isinstance(train.epochs, int)
    assert train.optimizer.lr == pytest.approx(0.01) and isinstance(train.optimizer.lr, float)
    assert train.deterministic is True
    assert loaded.config.seed == 7
    assert loaded.config.data.split.val == 0.5


def test_override_creates_missing_sections_and_indexes_lists(pipeline):
    loaded = load_config(pipeline, overrides=["train.early_stopping.patience=5",
                                              "data.cleaners=[a, b]", "data.cleaners[1]=c",
                                              "export.formats=[onnx, torchscript]"])

    assert loaded.config.train.early_stopping.patience == 5
    assert [c.name for c in loaded.config.data.cleaners] == ["a", "c"]
    assert loaded.config.export.formats == ["onnx", "torchscript"]


def test_override_index_out_of_range_names_the_key(pipeline):
    with pytest.raises(ConfigError, match=r"data.cleaners\[3\]: index 3 is out of range"):
        load_config(pipeline, overrides=["data.cleaners=[a]", "data.cleaners[3]=b"])


@pytest.mark.parametrize(("override", "key", "fragment"), [
    ("train.precision=fp64", "train.precision",
     "expected one of 'fp32', 'fp16', 'bf16', got 'fp64'"),
    ("train.optimizer.lr=fast", "train.optimizer.lr", "expected a number, got 'fast'"),
    ("train.deterministic=maybe", "train.deterministic", "expected true or false, got 'maybe'"),
    ("train.epochs=0", "train.epochs", "epochs must be at least 1, got 0"),
    ("train.epochs=1.5", "train.epochs", "expected an integer, got 1.5"),
    ("data.split.val=1.5", "data.split.val", "val and test must be fractions"),
    ("data.split.method=field", "data.split.method", "method 'field' needs 'field'"),
    ("export.formats=onnx", "export.formats", "expected a list, got 'onnx'"),
    ("data.cleaners=[a, {name: b, options: 3}]", "data.cleaners.1", "'options' must be a mapping"),
    ("model={name: x, opts: {}}", "model", "component settings go under 'options'"),
    ("name=[1, 2]", "name", "expected a string, got list"),
])
def test_bad_values_name_the_key_path(pipeline, override, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(pipeline, overrides=[override])

    assert info.value.key_path == key
    assert fragment in info.value.message
    assert info.value.file == str(pipeline)


def test_missing_required_section(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nmodel: tiny.mlp\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.key_path == "data"
    assert info.value.message == "required key is missing"


def test_unknown_top_level_key_points_at_its_line(pipeline):
    _edit(pipeline, "seed: 3", "sed: 3")

    with pytest.raises(ConfigError) as info:
        load_config(pipeline)

    assert info.value.key_path == "sed"
    assert info.value.line == 2
    assert "did you mean 'seed'?" in info.value.message


def test_defaults_are_filled_in(pipeline):
    config = load_config(pipeline).config

    assert config.train.accumulate == 1
    assert config.train.precision == "fp32"
    assert config.data.on_error == "drop"
    assert config.data.num_workers == 0
    assert config.export is None
    assert config.model.name == "tiny.mlp" and config.model.options == {"hidden": 4}


def test_component_may_be_a_bare_name(pipeline):
    _edit(pipeline, "model:\n  name: tiny.mlp\n  options: {hidden: 4}\n", "model: tiny.mlp\n")

    config = load_config(pipeline).config

    assert config.model.name == "tiny.mlp" and config.model.options == {}


def test_relative_path_options_resolve_against_the_pipeline_folder(
        pipeline, privet_host, sample_plugins, monkeypatch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    privet_host.load_path(sample_plugins)

    loaded = load_config(pipeline, catalog=privet_host.catalog)

    assert loaded.options["data.source"].paths == [pipeline.parent / "data.jsonl"]
    assert loaded.options["model"].hidden == 4


def test_toml_pipeline_is_read_like_yaml(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text('name = "t"\nmodel = "tiny.mlp"\n[data]\nsource = "jsonl"\n'
                    '[train]\nepochs = 4\n')

    config = load_config(path).config

    assert config.name == "t" and config.train.epochs == 4 and config.data.source.name == "jsonl"


def test_resolved_config_is_stable_and_holds_component_defaults(pipeline, privet_host,
                                                                  sample_plugins):
    privet_host.load_path(sample_plugins)
    first = load_config(pipeline, catalog=privet_host.catalog)
    second = load_config(pipeline, catalog=privet_host.catalog)

    assert first.resolved()["model"]["options"] == {"hidden": 4, "fail_at_step": 0}
    assert first.config_hash() == second.config_hash()
    third = load_config(pipeline, overrides=["seed=4"], catalog=privet_host.catalog)
    assert third.config_hash() != first.config_hash()
