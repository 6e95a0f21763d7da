"""One test (at least) per hook: register an implementation, prove it is called and used.

Test names start with ``test_<hook name>_``; ``test_docs.py`` checks that every hook in
``privet.hookspecs`` has one. Run hooks are exercised by whole tiny runs through
``privet.testing``'s ``run_pipeline``, with the tests' in-house plugin (sample_plugins/tiny.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import click
import numpy as np
import pytest
from click.testing import CliRunner

import privet

#: 48 synthetic records, 36 for training in batches of 12: 3 steps per epoch, 6 in all.
PIPELINE: dict[str, Any] = {
    "name": "hooks",
    "seed": 0,
    "data": {"source": {"name": "tiny.synthetic", "options": {"n": 48}},
             "split": {"method": "ordered", "val": 0.25}},
    "model": {"name": "tiny.mlp", "options": {"hidden": 4}},
    "train": {"epochs": 2, "batch_size": 12, "device": "cpu", "progress": "none",
              "log_every_n_steps": 1},
}
STEPS = 6


def _pipeline(**sections: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(PIPELINE))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


@pytest.fixture
def host(privet_host, sample_plugins):
    privet_host.load_path(sample_plugins)
    return privet_host


class Recorder:
    """Implements every run hook and records each call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [args for n, args in self.calls if n == name]

    @privet.hookimpl
    def before_run(self, run):
        folder = run.run_dir / "checkpoints"
        self.calls.append(("before_run", {
            "run": run, "is_main": run.is_main, "run_dir": run.run_dir,
            "checkpoints": sorted(p.name for p in folder.iterdir()) if folder.exists() else [],
        }))

    @privet.hookimpl
    def wrap_training(self, run, objects):
        self.calls.append(("wrap_training", {"objects": objects}))

    @privet.hookimpl
    def after_epoch(self, run, epoch, metrics):
        self.calls.append(("after_epoch", {"epoch": epoch, "metrics": dict(metrics)}))

    @privet.hookimpl
    def after_checkpoint(self, run, path, step):
        path = Path(path)
        self.calls.append(("after_checkpoint", {
            "path": path, "step": step,
            "files": sorted(p.name for p in path.iterdir()) if path.is_dir() else None,
        }))

    @privet.hookimpl
    def after_run(self, run, report):
        self.calls.append(("after_run", {"report": report}))

    @privet.hookimpl
    def on_run_error(self, run, error):
        self.calls.append(("on_run_error", {"error": error, "run": run}))


@pytest.fixture
def recorder(host) -> Recorder:
    rec = Recorder()
    host.register_plugin(rec, "recorder")
    return rec


# --- run hooks ---------------------------------------------------------------------------


def test_before_run_is_called_once_on_the_main_process_before_training(run_pipeline, recorder):
    outcome = run_pipeline(_pipeline())
    outcome.assert_success()

    (call,) = recorder.of("before_run")
    assert call["is_main"] is True
    assert call["run_dir"] == outcome.run_dir
    assert call["checkpoints"] == []  # nothing trained yet
    assert call["run"].config.name == "hooks"
    assert recorder.names().index("before_run") < recorder.names().index("after_epoch")


def test_wrap_training_replacements_are_used_by_the_loop(run_pipeline, host):
    steps: list[int] = []

    class SwapOptimizer:
        @privet.hookimpl
        def wrap_training(self, run, objects):
            import torch

            assert isinstance(objects.module, torch.nn.Module)
            assert isinstance(objects.optimizer, torch.optim.AdamW)
            assert len(objects.train_loader) == 3
            replacement = torch.optim.SGD(objects.module.parameters(), lr=0.05)
            replacement.register_step_post_hook(lambda *_: steps.append(1))
            objects.optimizer = replacement

    host.register_plugin(SwapOptimizer(), "swap")
    outcome = run_pipeline(_pipeline())

    outcome.assert_success()
    assert outcome.report["steps"] == STEPS
    assert len(steps) == STEPS  # every optimizer step went through the replacement


def test_wrap_training_is_called_before_before_run(run_pipeline, recorder):
    run_pipeline(_pipeline()).assert_success()

    names = recorder.names()
    assert names.count("wrap_training") == 1
    assert names.index("wrap_training") < names.index("before_run")


def test_after_epoch_gets_each_epoch_and_its_validation_metrics(run_pipeline, recorder):
    outcome = run_pipeline(_pipeline())
    outcome.assert_success()

    calls = recorder.of("after_epoch")
    assert [c["epoch"] for c in calls] == [0, 1]
    assert len(calls) == len(outcome.report["history"])
    for call, history in zip(calls, outcome.report["history"]):
        assert {"val/loss", "val/accuracy", "val/f1"} <= set(call["metrics"])
        assert call["metrics"]["val/loss"] == pytest.approx(history["val/loss"])
    assert outcome.report["final"]["val/loss"] == pytest.approx(calls[-1]["metrics"]["val/loss"])


def test_after_checkpoint_sees_a_complete_checkpoint(run_pipeline, recorder):
    outcome = run_pipeline(_pipeline(train={"checkpoint": {"every_n_steps": 2, "keep_last": 10}}))
    outcome.assert_success()

    calls = recorder.of("after_checkpoint")
    steps = [c["step"] for c in calls]
    assert {2, 3, 4, STEPS} <= set(steps)
    assert steps == sorted(steps)
    for call in calls:
        assert call["path"].parent == outcome.run_dir / "checkpoints"
        assert call["path"].name == f"step-{call['step']:08d}"
        assert "model.safetensors" in call["files"] and "state.json" in call["files"]


def test_after_run_gets_the_final_report(run_pipeline, recorder):
    outcome = run_pipeline(_pipeline())
    outcome.assert_success()

    (call,) = recorder.of("after_run")
    assert recorder.names()[-1] == "after_run"
    assert call["report"]["status"] == "completed"
    assert call["report"]["steps"] == STEPS
    saved = json.loads((outcome.run_dir / "report.json").read_text())
    assert saved["final"] == call["report"]["final"]
    assert recorder.of("on_run_error") == []


def test_on_run_error_gets_the_exception_and_after_run_is_not_called(run_pipeline, recorder):
    outcome = run_pipeline(_pipeline(model={"name": "tiny.mlp",
                                            "options": {"hidden": 4, "fail_at_step": 2}}))

    assert isinstance(outcome.error, RuntimeError)
    assert str(outcome.error) == "tiny.mlp failed on purpose"
    (call,) = recorder.of("on_run_error")
    assert call["error"] is outcome.error
    assert recorder.of("after_run") == []
    run_dir = call["run"].run_dir
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"


# --- component hooks ---------------------------------------------------------------------


class Numbers(privet.Source):
    """Yields ``count`` records ``{"i": 0..count-1}`` and one bad line."""

    @attrs.define(frozen=True)
    class Options:
        count: int = 3

    def shards(self):
        return [privet.Shard("numbers")]

    def files(self):
        return []

    def read(self, shard):
        yield from ({"i": i} for i in range(self.options.count))
        yield privet.BadRecord("not_a_number", "numbers:4")


def test_register_sources_component_is_in_the_catalog_and_reads(privet_host):
    class Plugin:
        @privet.hookimpl
        def register_sources(self, register):
            register("acme.numbers", Numbers)

    privet_host.register_plugin(Plugin(), "acme")
    source = privet_host.make("source", "acme.numbers", {"count": 2})

    assert privet_host.catalog.get("source", "acme.numbers").plugin == "acme"
    records = [r for shard in source.shards() for r in source.read(shard)]
    assert records == [{"i": 0}, {"i": 1}, privet.BadRecord("not_a_number", "numbers:4")]


class DropLeft(privet.Cleaner):
    """Drops records whose first feature is below ``threshold``; counts what it kept."""

    @attrs.define(frozen=True)
    class Options:
        threshold: float = -0.5

    def __init__(self, options=None):
        super().__init__(options)
        self.kept = 0

    def clean(self, record):
        if record["x"][0] < self.options.threshold:
            raise privet.DropRecord("left", bad=False)  # filtered on purpose, not bad data
        self.kept += 1
        return record

    def report(self):
        return {"kept": self.kept}


def test_register_cleaners_component_cleans_a_run(run_pipeline, host):
    class Plugin:
        @privet.hookimpl
        def register_cleaners(self, register):
            register("acme.drop_left", DropLeft)

    host.register_plugin(Plugin(), "acme")
    outcome = run_pipeline(_pipeline(data={"cleaners": [{"name": "acme.drop_left"}]}))

    outcome.assert_success()
    data = outcome.report["data"]
    assert data["dropped"]["left"] > 0
    assert sum(data["counts"].values()) == 48 - data["dropped"]["left"]


class CountingJitter(privet.Augmenter):
    """Adds tiny noise to ``x``; records the generators it was given (class-level)."""

    seen: list[Any] = []

    def augment(self, record, rng):
        CountingJitter.seen.append(rng)
        record["x"] = [v + float(rng.normal(0, 1e-3)) for v in record["x"]]
        return record


def test_register_augmenters_component_augments_training_records_only(run_pipeline, host):
    class Plugin:
        @privet.hookimpl
        def register_augmenters(self, register):
            register("acme.jitter", CountingJitter)

    host.register_plugin(Plugin(), "acme")
    CountingJitter.seen.clear()
    outcome = run_pipeline(_pipeline(data={"augmenters": ["acme.jitter"]}))

    outcome.assert_success()
    train = outcome.report["data"]["counts"]["train"]
    assert len(CountingJitter.seen) == 2 * train  # two epochs, training split only
    assert all(isinstance(rng, np.random.Generator) for rng in CountingJitter.seen)


def test_register_models_component_is_trained_by_a_run(run_pipeline, host):
    assert host.catalog.get("model", "tiny.mlp").plugin == "tiny"

    outcome = run_pipeline(_pipeline())

    outcome.assert_success()
    assert outcome.report["steps"] == STEPS
    assert 0.0 <= outcome.report["final"]["val/accuracy"] <= 1.0


class CountingSGD(privet.Optimizer):
    """Plain SGD that counts its steps; ``scale`` multiplies the learning rate it is given."""

    built: list[float] = []
    steps: list[int] = []

    @attrs.define(frozen=True)
    class Options:
        scale: float = 1.0

    def build(self, params, lr):
        import torch

        CountingSGD.built.append(lr)
        optimizer = torch.optim.SGD(params, lr=lr * self.options.scale)
        optimizer.register_step_post_hook(lambda *_: CountingSGD.steps.append(1))
        return optimizer


def test_register_optimizers_component_trains_a_run_with_its_flat_options(run_pipeline, host):
    class Plugin:
        @privet.hookimpl
        def register_optimizers(self, register):
            register("acme.counting_sgd", CountingSGD)

    host.register_plugin(Plugin(), "acme")
    CountingSGD.built.clear()
    CountingSGD.steps.clear()
    seen: list[float] = []

    class Spy:
        @privet.hookimpl
        def wrap_training(self, run, objects):
            seen.append(objects.optimizer.param_groups[0]["lr"])

    host.register_plugin(Spy(), "spy")
    outcome = run_pipeline(_pipeline(train={"optimizer": {"name": "acme.counting_sgd", "lr": 0.05,
                                                          "scale": 2.0}}))

    outcome.assert_success()
    assert CountingSGD.built == [0.05]
    assert seen == [0.1]  # the option reached the component
    assert len(CountingSGD.steps) == STEPS


def test_register_optimizers_builtins_build_torch_optimizers(privet_host):
    import torch

    assert privet_host.catalog.names("optimizer") == ["adam", "adamw", "sgd"]
    param = torch.nn.Parameter(torch.zeros(1))
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    for name, cls in expected.items():
        built = privet_host.make("optimizer", name).build([param], 0.25)
        assert type(built) is cls and built.param_groups[0]["lr"] == 0.25, name


class HalfLR(privet.Scheduler):
    """Halves the learning rate once; records the arguments the engine built it with."""

    interval = "epoch"
    built: list[tuple[int, int]] = []

    def build(self, optimizer, total_steps, steps_per_epoch):
        from torch.optim.lr_scheduler import LambdaLR

        HalfLR.built.append((total_steps, steps_per_epoch))
        return LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)


def test_register_schedulers_component_is_built_by_a_run(run_pipeline, host):
    class Plugin:
        @privet.hookimpl
        def register_schedulers(self, register):
            register("acme.half", HalfLR)

    host.register_plugin(Plugin(), "acme")
    HalfLR.built.clear()
    outcome = run_pipeline(_pipeline(train={"scheduler": "acme.half"}))

    outcome.assert_success()
    assert HalfLR.built == [(STEPS, 3)]


def test_register_schedulers_builtins_build_working_schedulers(privet_host):
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    for name in privet_host.catalog.names("scheduler"):
        optimizer = torch.optim.SGD([param], lr=0.1)
        scheduler = privet_host.make("scheduler", name)
        built = scheduler.build(optimizer, total_steps=10, steps_per_epoch=5)
        assert isinstance(built, (torch.optim.lr_scheduler.LRScheduler,
                                  torch.optim.lr_scheduler.ReduceLROnPlateau)), name


class FixedKey(privet.KeyProvider):
    """A key provider of a plugin: the key is derived from the argument (tests only)."""

    def load(self, argument, base_dir):
        import hashlib

        return hashlib.sha256(argument.encode()).digest()


def test_register_key_providers_plugin_key_seals_the_run_folder(run_pipeline, host):
    import hashlib

    from privet.crypto import Cipher
    from privet.storage import Storage

    class Plugin:
        @privet.hookimpl
        def register_key_providers(self, register):
            register("acme_kms", FixedKey)

    host.register_plugin(Plugin(), "acme")
    assert {"env", "file", "command", "acme_kms"} <= set(host.catalog.names("key_provider"))
    outcome = run_pipeline(_pipeline(security={"encryption": {"key": "acme_kms:projects/p/keys/k"}},
                                     export={"formats": []}))

    outcome.assert_success()
    state = outcome.run_dir / "state" / "components.json"
    assert not state.read_bytes().startswith(b"{")
    key = hashlib.sha256(b"projects/p/keys/k").digest()
    opened = Storage(outcome.run_dir, cipher=Cipher(key)).read_json("state/components.json")
    assert opened["model"]["name"] == "tiny.mlp"


class NpzExporter(privet.Exporter):
    """Writes the module's weights to an ``.npz`` file."""

    suffix = ".npz"

    def export(self, module, example_inputs, out_dir, input_names, output_names):
        path = Path(out_dir) / "weights.npz"
        np.savez(path, **{k: v.detach().numpy() for k, v in module.state_dict().items()})
        return path

    def load(self, path):
        weights = dict(np.load(path))
        return lambda inputs: [weights[k] for k in sorted(weights)]


def test_register_exporters_component_is_in_the_catalog_and_validates(privet_host, tmp_path):
    import torch

    from privet.config import load_config

    class Plugin:
        @privet.hookimpl
        def register_exporters(self, register):
            register("acme.npz", NpzExporter)

    privet_host.register_plugin(Plugin(), "acme")
    exporter = privet_host.make("exporter", "acme.npz")
    path = exporter.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), tmp_path, ["x"], ["y"])

    assert [a.shape for a in exporter.load(path)({})] == [(1,), (1, 2)]
    exporters = set(privet_host.catalog.names("exporter"))
    assert {"onnx", "torch_export", "torchscript", "acme.npz"} <= exporters
    loaded = load_config(data={"data": {"source": "jsonl"}, "model": "m",
                               "export": {"formats": ["acme.npz"]}})
    assert [s.name for kind, _, s in loaded.component_specs() if kind == "exporter"] == ["acme.npz"]


def test_register_privacy_mechanisms_selects_validates_and_reports(run_pipeline, host):
    @attrs.define(frozen=True)
    class NoteOptions:
        note: str = "none"

    class Note(privet.PrivacyMechanism):
        """Adds a note to the report (no privacy: an example of the contract)."""

        Options = NoteOptions

    class Plugin:
        @privet.hookimpl
        def register_privacy_mechanisms(self, register):
            register("note", Note)

        @privet.hookimpl
        def wrap_training(self, run, objects):
            mechanism = run.components.privacy
            run.report_extra["privacy"] = {"mechanism": mechanism.name, "note": mechanism.options.note}

    host.register_plugin(Plugin(), "note")
    outcome = run_pipeline(_pipeline(privacy={"mechanism": "note", "note": "hello"}))

    outcome.assert_success()
    assert outcome.report["privacy"] == {"mechanism": "note", "note": "hello"}
    assert json.loads((outcome.run_dir / "manifest.json").read_text())["privacy"]["note"] == "hello"
    refused = run_pipeline(_pipeline(privacy={"mechanism": "note", "colour": "red"}))
    assert isinstance(refused.error, privet.ConfigError) and "privacy.colour" in str(refused.error)


# --- launcher hooks ----------------------------------------------------------------------


def test_register_commands_adds_commands_once(host):
    group = click.Group("privet")

    host.register_commands(group)
    host.register_commands(group)  # asked again: not registered twice

    assert sorted(group.commands) == ["tiny-hello"]
    result = CliRunner().invoke(group, ["tiny-hello", "reader"])
    assert result.exit_code == 0 and result.output == "hello reader from tiny\n"


def test_starter_pipeline_first_answer_wins_and_none_when_unknown(host):
    class Other:
        @privet.hookimpl
        def starter_pipeline(self, modality):
            return "name: other\n" if modality in ("other", "tiny") else None

    assert host.starter_pipeline("tiny").startswith("name: tiny\n")
    host.register_plugin(Other(), "other")

    assert host.starter_pipeline("other") == "name: other\n"
    # pluggy asks the most recently registered plugin first; its answer stops the call.
    assert host.starter_pipeline("tiny") == "name: other\n"
    assert host.starter_pipeline("audio") is None
