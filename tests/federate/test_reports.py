"""The numbers of a round report: weighted global metrics and composed privacy."""

from __future__ import annotations

import pytest

from privet.federate.client import local_overrides
from privet.federate.coordinator import (best_round, compose_privacy, round_report,
                                         weighted_metrics)


def test_global_metrics_are_weighted_by_validation_examples():
    out = weighted_metrics([({"val/accuracy": 1.0, "val/loss": 0.2}, 30),
                            ({"val/accuracy": 0.5, "val/loss": 0.6}, 10),
                            ({}, 0)])  # a client without a validation split counts for nothing
    assert out == {"val/accuracy": pytest.approx(0.875), "val/loss": pytest.approx(0.3)}


def test_a_round_report_holds_shares_metrics_and_a_private_clients_epsilon():
    infos = {"a": {"examples": 100, "local": {"val/loss": 0.1}},
             "b": {"examples": 300, "privacy": {"epsilon": 2.5, "delta": 1e-5}}}
    evals = {"a": {"examples": 10, "metrics": {"val/accuracy": 0.9}},
             "b": {"examples": 30, "metrics": {"val/accuracy": 0.5}}}
    report = round_report(3, infos, evals, ["a", "b"], [100, 300])
    assert report["round"] == 3
    assert report["clients"]["a"]["weight"] == 0.25 and report["clients"]["b"]["weight"] == 0.75
    assert report["global"]["val/accuracy"] == pytest.approx(0.6)
    assert report["clients"]["b"]["privacy"]["epsilon"] == 2.5
    assert "privacy" not in report["clients"]["a"]


def test_privacy_over_rounds_is_the_sum_of_the_rounds():
    out = compose_privacy({"b": [(2.5, 1e-5), (2.0, 1e-5), (1.5, 1e-5)]})
    assert out["b"]["epsilon"] == pytest.approx(6.0)
    assert out["b"]["delta"] == pytest.approx(3e-5)
    assert out["b"]["epsilon_per_round"] == [2.5, 2.0, 1.5]


def test_the_best_round_follows_the_monitor_and_its_mode():
    history = [{"round": 1, "val/loss": 0.5, "val/accuracy": 0.7},
               {"round": 2, "val/loss": 0.3, "val/accuracy": 0.8},
               {"round": 3, "val/loss": 0.4, "val/accuracy": 0.9}]
    assert best_round(history, "val/loss", "min") == 2
    assert best_round(history, "val/accuracy", "max") == 3
    assert best_round(history, "val/f1", "max") == 3  # not reported: the last round


def test_local_training_per_round_overrides_the_clients_pipeline():
    from privet.federate.config import ClientSpec, FederationConfig

    spec = ClientSpec("a", "a.yaml", ["train.batch_size=8"])
    epochs = FederationConfig(clients=[spec], local_epochs=2)
    assert local_overrides(epochs, spec) == ["train.batch_size=8", "train.epochs=2",
                                             "train.max_steps=0", "export.formats=[]"]
    steps = FederationConfig(clients=[spec], local_steps=30)
    assert local_overrides(steps, spec)[1:3] == ["train.max_steps=30", "train.epochs=30"]
