"""Optimizers are components: named in ``train.optimizer``, validated like any component,
and trained with the pipeline's learning rate, else the model's ``default_lr()``, else 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import privet
from privet.config import load_config
from privet.train.optim import FALLBACK_LR, build_optimizer, resolve_lr

PIPELINE: dict[str, Any] = {
    "name": "optim",
    "data": {"source": {"name": "tiny.synthetic", "options": {"n": 32}},
             "split": {"method": "ordered", "val": 0.25}},
    "model": {"name": "tiny.mlp", "options": {"hidden": 4}},
    "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": "none"},
}

YAML = """\
data:
  source: {name: tiny.synthetic}
model: {name: tiny.mlp}
train:
  epochs: 1
  optimizer:
    name: OPTIMIZER
"""


@pytest.fixture
def host(privet_host, sample_plugins):
    privet_host.load_path(sample_plugins)
    return privet_host


def _pipeline(optimizer: dict[str, Any] | None = None, model: str = "tiny.mlp") -> dict[str, Any]:
    config = json.loads(json.dumps(PIPELINE))
    config["model"]["name"] = model
    if optimizer is not None:
        config["train"]["optimizer"] = optimizer
    return config


def _error(host, optimizer: dict[str, Any]) -> privet.ConfigError:
    with pytest.raises(privet.ConfigError) as info:
        load_config(data=_pipeline(optimizer), catalog=host.catalog)
    assert "\n" not in str(info.value)
    return info.value


# --- validation -------------------------------------------------------------------------------


def test_unknown_optimizer_name_gets_did_you_mean_with_the_file_line(host, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(YAML.replace("OPTIMIZER", "adamww"))

    with pytest.raises(privet.UnknownComponentError) as info:
        load_config(path, catalog=host.catalog)

    assert info.value.key_path == "train.optimizer.name"
    assert info.value.line == 7
    assert "did you mean 'adamw'?" in str(info.value)
    assert "installed: adam, adamw, sgd" in str(info.value)


def test_an_option_of_another_optimizer_is_refused_naming_its_key(host):
    err = _error(host, {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]})

    assert err.key_path == "train.optimizer.betas"
    assert "'betas'" in err.message and "momentum" in err.message  # lists the known options


@pytest.mark.parametrize("optimizer, key, words", [
    ({"name": "adamw", "lr": -0.1}, "train.optimizer.lr", "0 or more, got -0.1"),
    ({"name": "adamw", "lr": "fast"}, "train.optimizer.lr", "expected a number, got 'fast'"),
    ({"name": "adamw", "weight_decay": -1}, "train.optimizer.weight_decay", "0 or more"),
    ({"name": "adam", "betas": [0.9, 1.5]}, "train.optimizer.betas", "[0, 1)"),
    ({"name": "sgd", "nesterov": True}, "train.optimizer.nesterov", "momentum above 0"),
    ({"name": "adamw", "options": 3}, "train.optimizer.options", "must be a mapping"),
])
def test_bad_optimizer_values_are_refused_naming_the_key(host, optimizer, key, words):
    err = _error(host, optimizer)

    assert err.key_path == key
    assert words in err.message


def test_privet_validate_refuses_an_unknown_optimizer_in_one_line(privet_cli, sample_plugins,
                                                                  tmp_path):
    (tmp_path / "pipeline.yaml").write_text(YAML.replace("OPTIMIZER", "lion"))

    result = privet_cli("--plugin-dir", str(sample_plugins), "validate", "pipeline.yaml",
                        installed=False)

    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "pipeline.yaml:7: train.optimizer.name: unknown optimizer 'lion'" in lines[0]


def test_flat_options_and_the_options_mapping_give_the_same_optimizer(host):
    flat = load_config(data=_pipeline({"name": "sgd", "lr": 0.1, "momentum": 0.9}),
                       catalog=host.catalog)
    nested = load_config(data=_pipeline({"name": "sgd", "lr": 0.1, "options": {"momentum": 0.9}}),
                         catalog=host.catalog)

    assert flat.options["train.optimizer"] == nested.options["train.optimizer"]
    assert flat.options["train.optimizer"].momentum == 0.9


def test_resolved_config_is_flat_with_defaults_and_loads_back_the_same(host):
    loaded = load_config(data=_pipeline({"name": "adam", "lr": 0.02, "eps": 1e-6}),
                         catalog=host.catalog)

    resolved = json.loads(json.dumps(loaded.resolved()))  # as the run folder stores it
    assert resolved["train"]["optimizer"] == {"name": "adam", "lr": 0.02, "weight_decay": 0.0,
                                              "betas": [0.9, 0.999], "eps": 1e-6}
    again = load_config(data=yaml.safe_load(yaml.safe_dump(resolved)), catalog=host.catalog)
    assert again.config_hash() == loaded.config_hash()


# --- the learning rate --------------------------------------------------------------------------


class _Config:
    def __init__(self, lr: float | None) -> None:
        self.lr = lr


@pytest.mark.parametrize("pipeline_lr, model_lr, expected", [
    (0.2, 0.05, 0.2), (None, 0.05, 0.05), (None, None, FALLBACK_LR), (0.0, 0.05, 0.0),
])
def test_resolve_lr_prefers_the_pipeline_then_the_model_then_the_fallback(pipeline_lr, model_lr,
                                                                          expected):
    assert resolve_lr(_Config(pipeline_lr), model_lr) == expected


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_model_default_lr_that_cannot_train_is_refused(bad):
    with pytest.raises(privet.ConfigError, match="default_lr"):
        resolve_lr(_Config(None), bad)


def _register_fast_mlp(host, lr: float | None) -> None:
    """``acme.fast_mlp``: the tiny MLP with a default learning rate of ``lr``."""
    base = host.catalog.get("model", "tiny.mlp").cls

    class FastMLP(base):  # type: ignore[misc, valid-type]
        """The tiny MLP, with its own default learning rate."""

        def default_lr(self) -> float | None:
            return lr

    class Plugin:
        @privet.hookimpl
        def register_models(self, register):
            register("acme.fast_mlp", FastMLP)

    host.register_plugin(Plugin(), "acme")


class LrSpy:
    """Records the learning rate of the optimizer the run trains with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    @privet.hookimpl
    def wrap_training(self, run, objects):
        self.lrs.append(objects.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("optimizer, model_lr, expected", [
    (None, 0.05, 0.05),             # the model's default
    ({"lr": 0.2}, 0.05, 0.2),       # the pipeline's lr wins
    (None, None, FALLBACK_LR),      # neither: 1e-3
])
def test_a_run_trains_with_the_resolved_lr_and_records_it_in_its_config(
        run_pipeline, host, optimizer, model_lr, expected):
    _register_fast_mlp(host, model_lr)
    spy = LrSpy()
    host.register_plugin(spy, "spy")

    outcome = run_pipeline(_pipeline(optimizer, model="acme.fast_mlp"))

    outcome.assert_success()
    assert spy.lrs == [expected]
    saved = yaml.safe_load((Path(outcome.run_dir) / "config.yaml").read_text())
    assert saved["train"]["optimizer"]["lr"] == expected


def test_validation_resolves_the_lr_from_the_model(host):
    _register_fast_mlp(host, 0.05)

    loaded = load_config(data=_pipeline(model="acme.fast_mlp"), catalog=host.catalog)

    assert loaded.config.train.optimizer.lr == 0.05
    assert loaded.resolved()["train"]["optimizer"]["lr"] == 0.05


# --- build_optimizer, what the engine calls ----------------------------------------------------


def test_build_optimizer_builds_the_named_component_and_returns_its_lr(host):
    import torch

    loaded = load_config(data=_pipeline({"name": "sgd", "momentum": 0.5}))
    param = torch.nn.Parameter(torch.zeros(2))

    optimizer, lr = build_optimizer(loaded.config.train.optimizer, [param], host.catalog, 0.03)

    assert type(optimizer) is torch.optim.SGD and lr == 0.03
    assert optimizer.param_groups[0]["momentum"] == 0.5
    assert optimizer.param_groups[0]["lr"] == 0.03


def test_build_optimizer_refuses_an_unknown_name_and_bad_options(host):
    loaded = load_config(data=_pipeline({"name": "adamw"}))
    cfg = loaded.config.train.optimizer

    cfg.name = "sgdd"
    with pytest.raises(privet.UnknownComponentError, match="did you mean 'sgd'"):
        build_optimizer(cfg, [], host.catalog, None)
    cfg.name, cfg.options = "sgd", {"momentum": -1}
    with pytest.raises(privet.ConfigError, match="train.optimizer.momentum"):
        build_optimizer(cfg, [], host.catalog, None)

