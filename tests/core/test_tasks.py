"""Tasks: a model's metrics and post-processing come from its task, built in or a plugin's,
and a monitored metric the model does not report is refused before training.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

import privet
from privet.config import load_config
from privet.train.metrics import TASKS, MetricAccumulator, get_task

PIPELINE: dict[str, Any] = {
    "name": "tasks",
    "data": {"source": {"name": "tiny.synthetic", "options": {"n": 48}},
             "split": {"method": "ordered", "val": 0.25}},
    "model": {"name": "tiny.mlp", "options": {"hidden": 4}},
    "train": {"epochs": 2, "batch_size": 12, "device": "cpu", "progress": "none"},
}


@pytest.fixture
def host(privet_host, sample_plugins):
    privet_host.load_path(sample_plugins)
    return privet_host


def _pipeline(**train: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(PIPELINE))
    config["train"].update(train)
    return config


def _metrics(task: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    acc = MetricAccumulator(task, "val")
    for predictions, targets in batches:
        acc.update(privet.StepOutput(torch.tensor(float(len(targets))), len(targets),
                                     predictions, targets))
    acc.all_reduce()
    return acc.compute()


# --- the built-in tasks ------------------------------------------------------------------------


def test_classification_reports_accuracy_and_macro_f1_over_batches():
    # targets 0 0 1 | 1 2 ; predicted 0 1 1 | 1 0
    logits = torch.eye(3)
    batches = [(logits[[0, 1, 1]], torch.tensor([0, 0, 1])), (logits[[1, 0]], torch.tensor([1, 2]))]

    out = _metrics("classification", batches)

    assert list(out) == ["val/loss", "val/accuracy", "val/f1"]
    assert out["val/loss"] == 1.0
    assert out["val/accuracy"] == pytest.approx(3 / 5)
    f1 = [2 * 1 / (2 + 2), 2 * 2 / (2 + 3), 0.0]  # per class: 2tp / (support + predicted)
    assert out["val/f1"] == pytest.approx(sum(f1) / 3)


def test_regression_and_forecast_report_errors_in_data_units():
    pred, target = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [3.0], [2.0]])

    regression = _metrics("regression", [(pred, target)])
    forecast = _metrics("forecast", [(pred, target)])

    assert list(regression) == ["val/loss", "val/mae", "val/rmse"]
    assert regression["val/mae"] == pytest.approx(1.0)
    assert regression["val/rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert forecast["val/smape"] == pytest.approx((0 + 2 / 5 + 4 / 6) / 3)
    assert {k: v for k, v in forecast.items() if k != "val/smape"} == regression


def test_lm_reports_perplexity_of_the_mean_loss():
    acc = MetricAccumulator("lm", "val")
    acc.update(privet.StepOutput(torch.tensor(6.0), 3))

    assert acc.compute() == {"val/loss": 2.0, "val/perplexity": pytest.approx(math.exp(2.0))}


def test_metric_names_are_what_compute_reports():
    assert {name: get_task(name).metric_names() for name in TASKS} == {
        "classification": ["loss", "accuracy", "f1"], "regression": ["loss", "mae", "rmse"],
        "forecast": ["loss", "mae", "rmse", "smape"], "lm": ["loss", "perplexity"]}


def test_an_unknown_task_name_is_a_plugin_error_naming_the_known_ones():
    with pytest.raises(privet.PluginError, match="unknown model task 'clasification'.*classification"):
        get_task("clasification")


def test_default_postprocess_comes_from_the_task(host):
    model = host.make("model", "tiny.mlp")
    logits = np.array([[0.0, 2.0], [3.0, 0.0]], dtype=np.float32)

    out = model.postprocess([logits], [{}, {}])

    assert [o["label"] for o in out] == [1, 0]
    assert out[0]["probabilities"] == pytest.approx([1 / (1 + math.e ** 2), 1 / (1 + math.e ** -2)],
                                                    abs=1e-6)


# --- a plugin's own task -------------------------------------------------------------------------


class Confidence(privet.Task):
    """Logits over classes, judged by the mean probability given to the true class."""

    metrics = ("confidence",)

    def new_sums(self) -> dict[str, Any]:
        return {"p_true": 0.0, "n": 0}

    def update(self, sums, predictions, targets):
        probs = predictions.float().softmax(-1)
        sums["p_true"] = sums["p_true"] + probs.gather(-1, targets.long()[:, None]).sum()
        sums["n"] = sums["n"] + targets.numel()

    def compute(self, sums, loss):
        return {"confidence": float(sums["p_true"]) / float(sums["n"])} if float(sums["n"]) else {}

    def postprocess(self, model, outputs, records):
        probs = torch.as_tensor(outputs[0]).softmax(-1)
        return [{"confidence": round(float(p.max()), 4)} for p in probs]


def _register_confident_mlp(host) -> type:
    base = host.catalog.get("model", "tiny.mlp").cls

    class ConfidentMLP(base):  # type: ignore[misc, valid-type]
        """The tiny MLP with the plugin's own task."""

        task = Confidence

    class Plugin:
        @privet.hookimpl
        def register_models(self, register):
            register("acme.confident", ConfidentMLP)

    host.register_plugin(Plugin(), "acme")
    return ConfidentMLP


def test_a_plugin_task_drives_metrics_early_stopping_and_postprocess(run_pipeline, host):
    _register_confident_mlp(host)
    config = _pipeline(early_stopping={"monitor": "val/confidence", "mode": "max", "patience": 5})
    config["model"]["name"] = "acme.confident"

    outcome = run_pipeline(config)

    outcome.assert_success()
    assert set(outcome.report["final"]) >= {"val/loss", "val/confidence"}
    assert "val/accuracy" not in outcome.report["final"]
    assert 0.0 < outcome.report["final"]["val/confidence"] < 1.0
    model = host.make("model", "acme.confident")
    assert model.postprocess([np.array([[0.0, 0.0]])], [{}]) == [{"confidence": 0.5}]


# --- the early-stopping monitor is checked before training ------------------------------------


def test_a_monitor_the_model_does_not_report_is_refused_naming_what_it_reports(host, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("data: {source: tiny.synthetic}\nmodel: tiny.mlp\ntrain:\n"
                    "  early_stopping:\n    monitor: val/mae\n")

    with pytest.raises(privet.ConfigError) as info:
        load_config(path, catalog=host.catalog)

    err = info.value
    assert (err.key_path, err.line) == ("train.early_stopping.monitor", 5)
    assert err.message == ("model 'tiny.mlp' does not report 'val/mae'; it reports val/loss, "
                           "val/accuracy, val/f1")


def test_a_plugin_tasks_metrics_are_accepted_and_others_refused(host):
    _register_confident_mlp(host)
    config = _pipeline(early_stopping={"monitor": "val/accuracy"})
    config["model"]["name"] = "acme.confident"

    with pytest.raises(privet.ConfigError, match="it reports val/loss, val/confidence$"):
        load_config(data=config, catalog=host.catalog)
    config["train"]["early_stopping"]["monitor"] = "val/confidence"
    load_config(data=config, catalog=host.catalog)


def test_a_metric_scheduler_monitor_is_checked_too(host):
    config = _pipeline(scheduler={"name": "plateau", "options": {"monitor": "val/rmse"}})

    with pytest.raises(privet.ConfigError) as info:
        load_config(data=config, catalog=host.catalog)

    assert info.value.key_path == "train.scheduler.options.monitor"
    assert "'val/rmse'" in info.value.message


def test_privet_validate_refuses_a_bad_monitor_in_one_line_with_exit_2(privet_cli, sample_plugins,
                                                                       tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        "data: {source: tiny.synthetic}\nmodel: tiny.mlp\n"
        "train: {early_stopping: {monitor: val/acc, mode: max}}\n")

    result = privet_cli("--plugin-dir", str(sample_plugins), "validate", "pipeline.yaml",
                        installed=False)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "privet: error: pipeline.yaml:3: train.early_stopping.monitor: model 'tiny.mlp' does not "
        "report 'val/acc'; it reports val/loss, val/accuracy, val/f1"]


def test_a_refused_monitor_stops_a_run_before_it_creates_anything(run_pipeline, host, tmp_path):
    outcome = run_pipeline(_pipeline(early_stopping={"monitor": "val/acc"}))

    assert isinstance(outcome.error, privet.ConfigError)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
