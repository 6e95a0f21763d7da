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
    assert result.stdout.strip() == f"{pipeline}: valid (3 components)"  # source, model, optimizer


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


#: Settings that used to pass validation and then damage or crash a run: (line written
#: into the pipeline file, the key the error must name, what it must say).
DAMAGING = [
    ("train: {clip_grad_norm: -1}", "train.clip_grad_norm", "must be a finite number, 0 or more"),
    ("train: {clip_grad_norm: .inf}", "train.clip_grad_norm", "must be a finite number"),
    ("train: {max_steps: -4}", "train.max_steps", "max_steps must be 0 or more, got -4"),
    ("train: {log_every_n_steps: 0}", "train.log_every_n_steps",
     "log_every_n_steps must be at least 1, got 0"),
    ("train: {log_every_n_steps: -3}", "train.log_every_n_steps", "must be at least 1"),
    ("train: {batch_size: 0}", "train.batch_size", "batch_size must be at least 1, got 0"),
    ("train: {batch_size: -8}", "train.batch_size", "batch_size must be at least 1"),
    ("train: {eval_batch_size: 0}", "train.eval_batch_size", "must be at least 1, got 0"),
    ("train: {epochs: -1}", "train.epochs", "epochs must be at least 1, got -1"),
    ("train: {accumulate: 0}", "train.accumulate", "accumulate must be at least 1, got 0"),
    ("train: {checkpoint: {keep_last: 0}}", "train.checkpoint.keep_last",
     "keep_last must be at least 1, got 0"),
    ("train: {checkpoint: {every_n_steps: -1}}", "train.checkpoint.every_n_steps",
     "must be 0 or more"),
    ("train: {early_stopping: {patience: 0}}", "train.early_stopping.patience",
     "patience must be at least 1"),
    ("train: {early_stopping: {min_delta: -0.1}}", "train.early_stopping.min_delta",
     "must be 0 or more"),
    ("data: {source: jsonl, num_workers: -2}", "data.num_workers",
     "num_workers must be 0 or more, got -2"),
    ("data: {source: jsonl, shard_rows: 0}", "data.shard_rows", "must be at least 1"),
    ("data: {source: jsonl, max_bad_fraction: 2}", "data.max_bad_fraction",
     "must be between 0 and 1"),
    ("seed: -1", "seed", "seed must be between 0 and 2**63-1, got -1"),
]


@pytest.mark.parametrize(("setting", "key", "fragment"), DAMAGING)
def test_settings_that_would_damage_a_run_are_refused_with_key_and_line(tmp_path, setting,
                                                                        key, fragment):
    path = tmp_path / "p.yaml"
    top = setting.split(":", 1)[0]
    base = {"name": "name: x", "model": "model: tiny.mlp", "data": "data: {source: jsonl}"}
    base[top] = setting
    path.write_text("\n".join(base.values()) + "\n")
    line = list(base).index(top) + 1 if top in base else len(base) + 1
    if top not in base:
        path.write_text(path.read_text() + setting + "\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.key_path == key
    assert fragment in info.value.message
    assert str(info.value).startswith(f"{path}:{line}: {key}: ")


@pytest.mark.parametrize("override", ["train.clip_grad_norm=-1", "train.max_steps=-4",
                                      "train.log_every_n_steps=0", "data.num_workers=-2",
                                      "train.batch_size=0"])
def test_damaging_settings_are_one_line_and_exit_2_through_validate(
        privet_cli, sample_plugins, pipeline, override):
    error = _one_error_line(_validate(privet_cli, sample_plugins, pipeline, "-s", override))

    assert error.startswith(f"{pipeline}:")
    assert f" {override.split('=')[0]}: " in error


def test_clip_grad_norm_zero_or_unset_means_no_clipping(pipeline):
    assert load_config(pipeline, overrides=["train.clip_grad_norm=0"]).config.train.clip_grad_norm == 0
    assert load_config(pipeline).config.train.clip_grad_norm is None


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
