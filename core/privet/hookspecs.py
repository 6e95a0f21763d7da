"""Every hook a Privet plugin may implement. Read this file first.

A plugin is a module (or object) with functions decorated by ``privet.hookimpl`` whose
names match the specifications below. Installed plugins are found through the
entry-point group ``privet.plugins``; in-house plugins can also be loaded from a folder
with ``--plugin-dir``. Hooks may accept fewer arguments than specified (pluggy passes
only those named).

Two families:

* **Component hooks** (``register_*``) are called once per process when the catalog is
  built. Each receives a ``register(name, component_class)`` callback; names are dotted
  (``text.jsonl``) and unique per kind across all plugins.
* **Run hooks** are called by the engine at fixed points of a run, in every process of a
  distributed run unless documented otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import click

    from .components import Component
    from .train.context import RunContext, TrainingObjects

PROJECT = "privet"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, "type[Component]"], None]


# --- component hooks -----------------------------------------------------------------


@hookspec
def register_sources(register: Register) -> None:
    """Register data sources (subclasses of :class:`privet.Source`).

    :param register: ``register(name, cls)``; call it once per source.

    Called once when the catalog is built (``privet plugins``, ``validate``, ``run``).

    Example::

        @privet.hookimpl
        def register_sources(register):
            register("acme.parquet", ParquetSource)
    """


@hookspec
def register_cleaners(register: Register) -> None:
    """Register cleaners (subclasses of :class:`privet.Cleaner`).

    :param register: ``register(name, cls)``.

    Called once when the catalog is built. A cleaner with ``needs_fit = True`` is fitted
    on the training split only.

    Example::

        @privet.hookimpl
        def register_cleaners(register):
            register("acme.lowercase", Lowercase)
    """


@hookspec
def register_augmenters(register: Register) -> None:
    """Register augmenters (subclasses of :class:`privet.Augmenter`).

    :param register: ``register(name, cls)``.

    Called once when the catalog is built. Augmenters run on the training split only,
    in DataLoader workers, with a generator seeded per sample and epoch.

    Example::

        @privet.hookimpl
        def register_augmenters(register):
            register("acme.noise", GaussianNoise)
    """


@hookspec
def register_models(register: Register) -> None:
    """Register models (subclasses of :class:`privet.Model`).

    :param register: ``register(name, cls)``.

    Called once when the catalog is built.

    Example::

        @privet.hookimpl
        def register_models(register):
            register("acme.mlp", MLP)
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers (subclasses of :class:`privet.Optimizer`).

    :param register: ``register(name, cls)``.

    Called once when the catalog is built. ``train.optimizer.name`` picks one; the other
    keys of ``train.optimizer`` besides ``lr`` are its ``Options``. Its
    ``build(params, lr)`` returns a ``torch.optim.Optimizer``. The core registers
    ``adamw``, ``adam`` and ``sgd`` this way.

    Example::

        @privet.hookimpl
        def register_optimizers(register):
            register("acme.lion", Lion)
    """


@hookspec
def register_schedulers(register: Register) -> None:
    """Register learning-rate schedulers (subclasses of :class:`privet.Scheduler`).

    :param register: ``register(name, cls)``.

    Called once when the catalog is built. The core registers ``cosine``,
    ``linear_warmup``, ``cosine_warmup``, ``step``, ``plateau`` and ``onecycle`` this way.

    Example::

        @privet.hookimpl
        def register_schedulers(register):
            register("acme.inverse_sqrt", InverseSqrt)
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register exporters (subclasses of :class:`privet.Exporter`).

    :param register: ``register(name, cls)``.

    Called once when the catalog is built. The core registers ``torch_export``, ``onnx``
    and ``torchscript`` this way.

    Example::

        @privet.hookimpl
        def register_exporters(register):
            register("tensorrt", TensorRTExporter)
    """


@hookspec
def register_key_providers(register: Register) -> None:
    """Register key providers (subclasses of :class:`privet.KeyProvider`).

    :param register: ``register(name, cls)``; ``name`` is the prefix of a key reference.

    Called once when the catalog is built. ``security.encryption.key: "NAME:ARGUMENT"``
    asks the provider ``NAME`` for the run's 32-byte key with ``ARGUMENT``; the key itself
    is never in the pipeline file or the run folder. The core registers ``env``, ``file``
    and ``command`` this way; a key service (KMS, Vault) is a plugin.

    Example::

        @privet.hookimpl
        def register_key_providers(register):
            register("acme_kms", AcmeKmsKey)   # key: "acme_kms:projects/p/keys/privet"
    """


@hookspec
def register_privacy_mechanisms(register: Register) -> None:
    """Register privacy mechanisms (subclasses of :class:`privet.PrivacyMechanism`).

    :param register: ``register(name, cls)``; ``name`` is what ``privacy.mechanism`` says.

    Called once when the catalog is built. ``privacy: {mechanism: NAME, OPTION: ...}`` in
    a pipeline file picks the mechanism and validates the other keys against its
    ``Options``; the engine puts the instance on ``run.components.privacy``. Applying it
    is the plugin's own ``wrap_training``. The core registers none; ``privet-dp``
    registers ``dp-sgd``.

    Example::

        @privet.hookimpl
        def register_privacy_mechanisms(register):
            register("dp-sgd", DPSGD)
    """


# --- launcher ------------------------------------------------------------------------


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``privet`` launcher.

    :param cli: the root click group; call ``cli.add_command(cmd)``.

    Called when the launcher is asked for a command that is not built in, so that
    ``privet --help`` stays fast and never imports plugins.

    Example::

        @privet.hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("run")
            def generate(run): ...
    """


@hookspec(firstresult=True)
def starter_pipeline(modality: str) -> str | None:
    """Return the text of a starter pipeline file for ``privet init MODALITY``.

    :param modality: what the user asked for (``text``, ``image`` ...).
    :return: YAML text, or ``None`` if this plugin does not provide that modality.

    Called by ``privet init``; the first non-``None`` answer wins.

    Example::

        @privet.hookimpl
        def starter_pipeline(modality):
            if modality == "text":
                return (files(__package__) / "starter.yaml").read_text()
    """


# --- run hooks -----------------------------------------------------------------------


@hookspec
def before_run(run: RunContext) -> None:
    """Called once the run folder, data and model are ready, before the first step.

    :param run: the :class:`privet.RunContext` (``config``, ``run_dir``, ``storage``,
        ``rank``, ``catalog``, ``config_hash`` ...).

    Called in every process; ``run.is_main`` is true on rank 0 only.

    Example::

        @privet.hookimpl
        def before_run(run):
            if run.is_main:
                audit_log.write(run.config_hash)
    """


@hookspec
def wrap_training(run: RunContext, objects: TrainingObjects) -> None:
    """Replace or wrap the model, optimizer or loader before training starts.

    :param run: the :class:`privet.RunContext`.
    :param objects: a :class:`privet.TrainingObjects` with mutable ``module``,
        ``optimizer`` and ``train_loader`` attributes; assign to them to wrap. Its
        extension points (``extra_state`` saved in checkpoints, ``metrics`` logged,
        ``stop_checks`` after each step, ``micro_step`` between accumulated
        micro-batches, ``sum_loss``, ``backward`` in place of the loop's own backward)
        let a plugin change training without a core change.

    Called once per process after the optimizer is built and before a checkpoint is
    resumed (so ``extra_state`` is restored after this hook). Implementations run in
    registration order, each seeing the previous one's replacements. This is where
    differential privacy (``privet-dp``: Opacus' per-sample gradients, noise and
    accountant) or a custom strategy plugs in; ``run.report_extra`` takes what it adds
    to report.json and manifest.json.

    Example::

        @privet.hookimpl
        def wrap_training(run, objects):
            objects.optimizer = NoisyOptimizer(objects.optimizer, sigma=1.0)
    """


@hookspec
def after_epoch(run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch's validation.

    :param run: the :class:`privet.RunContext`.
    :param epoch: the 0-based epoch that just ended.
    :param metrics: the epoch's validation metrics: ``val/loss`` and ``val/NAME`` for each
        of the model's ``metric_names()`` (``val/accuracy`` ...), and ``epoch`` (1-based).

    Example::

        @privet.hookimpl
        def after_epoch(run, epoch, metrics):
            print(epoch, metrics["val/loss"])
    """


@hookspec
def after_checkpoint(run: RunContext, path: Path, step: int) -> None:
    """Called on rank 0 after a checkpoint was written completely (after the rename).

    :param run: the :class:`privet.RunContext`.
    :param path: the checkpoint folder.
    :param step: the global optimizer step it holds.

    Example::

        @privet.hookimpl
        def after_checkpoint(run, path, step):
            upload(path)
    """


@hookspec
def after_run(run: RunContext, report: dict[str, Any]) -> None:
    """Called once when a run ends normally (completed or stopped early).

    :param run: the :class:`privet.RunContext`.
    :param report: the content of ``report.json``.

    Example::

        @privet.hookimpl
        def after_run(run, report):
            notify(report["status"])
    """


@hookspec
def on_run_error(run: RunContext, error: BaseException) -> None:
    """Called when a run fails with an exception, before it propagates.

    :param run: the :class:`privet.RunContext`.
    :param error: the exception.

    Example::

        @privet.hookimpl
        def on_run_error(run, error):
            page_oncall(str(error))
    """
