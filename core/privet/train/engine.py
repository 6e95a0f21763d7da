"""A run from pipeline file to report: the engine's entry point and its recipe.

``run_from_config`` picks a new run or the one to resume, then runs a :class:`Recipe`:
the order of work of one run, as named steps a reader follows top to bottom (the shape
of a torchtune recipe). ``privet run`` and ``privet resume`` are thin wrappers around it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from .. import objectstore
from ..config import LoadedConfig
from ..errors import ConfigError
from ..pipeline import prepare_config
from ..runs import (RunLock, check_world_size, create_run_folder, load_run, restart_dir,
                    runs_root)
from ..storage import Storage
from .context import Components, RunContext, RunPlan, TrainingObjects
from .optim import check_monitor

def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def select_device(name: str, local_rank: int = 0) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)",
                          path="train.device") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine; use device auto or cpu",
                          path="train.device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _instantiate(loaded: LoadedConfig, catalog: Any) -> Components:
    c = loaded.config
    return Components(
        source=loaded.instantiate(catalog, "data.source"),
        cleaners=[loaded.instantiate(catalog, f"data.cleaners.{i}") for i in range(len(c.data.cleaners))],
        augmenters=[loaded.instantiate(catalog, f"data.augmenters.{i}") for i in range(len(c.data.augmenters))],
        model=loaded.instantiate(catalog, "model"),
        scheduler=loaded.instantiate(catalog, "train.scheduler") if c.train.scheduler else None,
        privacy=loaded.instantiate(catalog, "privacy") if c.privacy is not None else None,
    )


def run_from_config(config: dict[str, Any] | str | Path, *, host: Any | None = None,
                    base_dir: str | Path | None = None, overrides: list[str] = (),
                    name: str | None = None, resume_dir: str | Path | None = None,
                    progress: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Run a pipeline (a file path or a dict shaped like one). Returns (run folder, report)."""
    from . import distributed

    env = None
    lock = None
    ok = False
    try:
        if resume_dir is None:
            host, loaded = prepare_config(config, host=host, base_dir=base_dir, overrides=list(overrides))
            objectstore.configure(loaded.config.storage)
            env = distributed.setup(loaded.config.train.device)
            # a restarted torchrun worker continues its job's run: rank 0 decides for all
            found = distributed.broadcast(
                _restart_dir(loaded, name) if env.rank == 0 else None, env)
            if found is None:
                result = _run(loaded, host, env, name=name, resume_dir=None, progress=progress)
                ok = True
                return result
            resume_dir = found
        if objectstore.is_remote(resume_dir):  # the environment says how to reach the store
            objectstore.configure(None)
        stored = load_run(resume_dir)  # a run on an object store: fetched to a working copy
        resume_dir = stored.run_dir
        if int(os.environ.get("RANK", "0")) == 0:  # first: a running run is not touched at all
            lock = RunLock(stored.run_dir).acquire()
        host, loaded = prepare_config(stored.config, host=host, base_dir=stored.base_dir)
        objectstore.configure(loaded.config.storage)
        if env is None:
            env = distributed.setup(loaded.config.train.device)
        check_world_size(stored, env.world_size)
        result = _run(loaded, host, env, name=None, resume_dir=resume_dir, progress=progress,
                      lock=lock)
        ok = True
        return result
    finally:
        if lock is not None:
            lock.release()
        if env is not None:
            distributed.teardown(env, together=ok)


def _restart_dir(loaded: LoadedConfig, name: str | None) -> str | Path | None:
    """The run an earlier attempt of this torchrun job made: a local folder, or on an object
    store the run (named ``NAME`` or ``NAME-N``) whose manifest holds the job's elastic id."""
    import json
    import re

    cfg = loaded.config
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not objectstore.is_remote(cfg.runs_dir) or os.environ.get("PRIVET_RUN_DIR"):
        return restart_dir(cfg, loaded.base_dir)
    if not run_id or run_id == "none":
        return None
    stem = re.escape(name or cfg.name)
    for child in objectstore.children(cfg.runs_dir):
        if not re.fullmatch(rf"{stem}(-\d+)?", child):
            continue
        try:
            manifest = json.loads(objectstore.read_bytes(objectstore.join(cfg.runs_dir, child,
                                                                          "manifest.json")))
        except (objectstore.ObjectStoreError, ValueError):
            continue  # a folder being created, or no run
        if isinstance(manifest, dict) and manifest.get("elastic_run_id") == run_id:
            return objectstore.join(cfg.runs_dir, child)
    return None


def _run(loaded: LoadedConfig, host: Any, env: Any, *, name: str | None,
         resume_dir: str | Path | None, progress: str | None,
         lock: RunLock | None = None) -> tuple[Path, dict[str, Any]]:
    recipe = Recipe(loaded, host, env, progress=progress)
    recipe.lock = lock
    return recipe.run(name=name, resume_dir=resume_dir)


class Recipe:
    """One run, in the order of its work.

    :meth:`run` reads as the table of contents: the run folder, the data, the training
    objects, the checkpoint to continue from, the loggers, ``fit``, then the report and
    the export. Each step is a method small enough to read (and test) alone; what a
    step makes for later ones lives on ``self`` or on the :class:`RunContext`.
    """

    def __init__(self, loaded: LoadedConfig, host: Any, env: Any, *, progress: str | None) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.host = host
        self.env = env
        self.is_main = env.rank == 0
        self.progress_mode = progress or self.cfg.train.progress
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.lock: RunLock | None = None
        self.run_ctx: RunContext | None = None
        self.trainer: Any = None
        self.lr: float | None = None

    def run(self, *, name: str | None, resume_dir: str | Path | None) -> tuple[Path, dict[str, Any]]:
        from ..storage import owner_only

        with owner_only():  # what libraries write themselves (TensorBoard) is owner-only too
            return self._run(name=name, resume_dir=resume_dir)

    def _run(self, *, name: str | None, resume_dir: str | Path | None) -> tuple[Path, dict[str, Any]]:
        self.setup_run_folder(name, resume_dir)
        try:
            self.setup_data()
            self.setup_training()
            self.restore_checkpoint()
            self.setup_loggers()
            state = self.fit()
            report = self.finish(state)
            self.host.after_run(self.run_ctx, report)
        except BaseException as err:
            self.fail(err)
            raise
        finally:
            self.discard_cache()  # data.cache.keep: false, on success and on failure
            if self.lock is not None:
                self.lock.release()
        return self.run_ctx.run_dir, report

    def discard_cache(self) -> None:
        """``data.cache.keep: false``: rank 0 deletes the prepared cache and the run's link."""
        from ..data.prepare import remove_cache

        run = self.run_ctx
        if self.cfg.data.cache.keep or not self.is_main or run is None or run.prepared is None:
            return
        remove_cache(run.prepared.cache, run.storage)

    # -- 1. the run folder (rank 0 decides, the others follow) ----------------------------------

    def setup_run_folder(self, name: str | None, resume_dir: str | Path | None) -> None:
        from . import distributed

        from ..crypto import check_key, cipher_for, protect_run

        cfg, env = self.cfg, self.env
        components = _instantiate(self.loaded, self.host.catalog)
        check_monitor(self.loaded, components.model, components.scheduler)
        # the key first: a missing or bad key fails before anything is created or written
        cipher = cipher_for(cfg, self.host.catalog, self.loaded.base_dir,
                            where=str(Path(resume_dir) / "config.yaml") if resume_dir else self.loaded.file)
        if resume_dir is not None:
            run_dir = Path(resume_dir).resolve()
        else:
            run_dir = distributed.broadcast(self._new_folder(name) if self.is_main else None, env)
            if objectstore.is_remote(cfg.runs_dir):  # every rank knows the folder's URL
                from ..storage import mirror, remote_url

                url = distributed.broadcast(remote_url(run_dir) if self.is_main else None, env)
                mirror(run_dir, url)
        if self.is_main and self.lock is None:  # before anything is written: a second
            self.lock = RunLock(run_dir).acquire()  # process is refused here
        check_key(Storage(run_dir, cipher=cipher), create=self.is_main)  # wrong key: stop here
        protect_run(run_dir, cipher)  # the folder and the cache: sealed with the run's key
        device = select_device(cfg.train.device, env.local_rank)
        if device.type == "cpu":
            from .malloc import tune_for_training

            tune_for_training()
        self.run_ctx = RunContext(config=cfg, loaded=self.loaded, run_dir=run_dir,
                                  storage=Storage(run_dir, cipher=cipher), host=self.host,
                                  components=components,
                                  rank=env.rank, local_rank=env.local_rank,
                                  world_size=env.world_size, device=device,
                                  resumed=resume_dir is not None)
        seed_everything(cfg.seed, cfg.train.deterministic)
        if self.is_main and resume_dir is None:
            self._write_config_and_manifest()

    def _new_folder(self, name: str | None) -> Path:
        env_dir = os.environ.get("PRIVET_RUN_DIR")
        if env_dir:
            Storage(env_dir).makedirs()
            return Path(env_dir).resolve()
        if objectstore.is_remote(self.cfg.runs_dir):  # a local working copy, mirrored
            from ..runs import create_remote_run

            return create_remote_run(self.cfg.runs_dir, name or self.cfg.name).resolve()
        runs = runs_root(self.cfg, self.loaded.base_dir)
        return create_run_folder(runs, name or self.cfg.name).resolve()

    def _write_config_and_manifest(self) -> None:
        """Written first, so that a run killed at any later point can be resumed."""
        import yaml

        from ..monitor.manifest import build_manifest
        from .report import plugin_versions

        run, loaded = self.run_ctx, self.loaded
        run.storage.write_text("config.yaml", yaml.safe_dump(self._resolved_config(), sort_keys=False))
        manifest = build_manifest(config_hash=loaded.config_hash(),
                                  data_files=run.components.source.files(),
                                  plugins=plugin_versions(self.host), pipeline_dir=loaded.base_dir,
                                  world_size=self.env.world_size)
        manifest.update(pipeline_dir=str(loaded.base_dir), pipeline_file=loaded.file,
                        elastic_run_id=os.environ.get("TORCHELASTIC_RUN_ID"))
        run.storage.write_json("manifest.json", manifest)

    # -- 2. the data ----------------------------------------------------------------------------------

    def setup_data(self) -> None:
        from ..data.parallel import parallel_prefix
        from ..data.prepare import Preparer
        from ..data.ranks import RankLink, serve
        from . import distributed

        run, is_main = self.run_ctx, self.is_main
        c = run.components
        t0 = time.perf_counter()
        log = lambda m: print(m, file=sys.stderr) if is_main else None  # noqa: E731
        # every rank at once (a gloo group is collective): the others clean their shards
        link = RankLink(self.env.rank, self.env.world_size, log) if self.env.world_size > 1 else None
        preparer = Preparer(self.cfg.data, c.source, c.cleaners, c.model, seed=self.cfg.seed,
                            fingerprint_extra=_fingerprint_extra(self.loaded), log=log,
                            progress=self.cfg.train.progress if is_main else "none", ranks=link)
        cache_root = self._cache_root()
        if is_main:
            try:
                run.prepared = preparer.prepare(cache_root)
            finally:
                if link is not None:
                    link.stop()  # also after a reuse or a failure: the ranks wait for it
            distributed.announce(self.env, "prepared")
        else:  # waits on the store, not a collective: preparation may outlast NCCL's timeout
            if link is not None and link.ok:
                serve(link, c.source, c.cleaners, parallel_prefix(c.cleaners),
                      self.cfg.data.prepare_workers)
            distributed.wait_for(self.env, "prepared")
            run.prepared = preparer.prepare(cache_root)
        self.timings["prepare_s"] = round(time.perf_counter() - t0, 3)
        if is_main:
            self._record_prepared()

    def _cache_root(self) -> Path:
        """``data.cache_dir``, else ``runs_dir/.cache``; a run on an object store keeps its
        cache on local disk (the staging folder), never in the bucket."""
        from ..runs import staging_root

        if self.cfg.data.cache_dir is not None:
            return Path(self.cfg.data.cache_dir)
        if objectstore.is_remote(self.cfg.runs_dir):
            return staging_root() / ".cache"
        return self.run_ctx.run_dir.parent / ".cache"

    def _record_prepared(self) -> None:
        """The cache link, the fitted component state and the cache in the manifest."""
        run = self.run_ctx
        c, storage, cache = run.components, run.storage, run.prepared.cache.root.resolve()
        storage.symlink("cache", cache)
        storage.write_json("state/components.json", {
            "cleaners": [{"name": x.name, "state": x.state_dict()} for x in c.cleaners],
            "model": {"name": c.model.name, "state": c.model.state_dict()},
        })
        manifest = storage.read_json_object("manifest.json", what="run manifest")
        if manifest.get("data_cache") != str(run.prepared.cache.root):
            manifest["data_cache"] = str(run.prepared.cache.root)
            manifest["global_batch"] = self.cfg.train.batch_size * self.cfg.train.accumulate * self.env.world_size
            storage.write_json("manifest.json", manifest)

    # -- 3. model, optimizer, loaders, scheduler, trainer ----------------------------------------

    def setup_training(self) -> None:
        import torch

        from . import distributed
        from .checkpoint import CheckpointManager
        from .loop import Trainer

        run, cfg, env = self.run_ctx, self.cfg, self.env
        torch.manual_seed(cfg.seed)
        raw_module = run.components.model.build().to(run.device)
        module = distributed.wrap_module(raw_module, cfg.train.strategy, env, run.device)
        if cfg.train.compile:
            module = torch.compile(module)
        optimizer = self._optimizer(module)
        train_loader, val_loader = self._loaders()
        objects = TrainingObjects(module=module, optimizer=optimizer, train_loader=train_loader)
        self.host.wrap_training(run, objects)
        run.plan = RunPlan.from_loader(cfg.train, len(objects.train_loader), env.world_size)
        scheduler = None
        if run.components.scheduler is not None:
            scheduler = run.components.scheduler.build(objects.optimizer, run.plan.total_steps,
                                                       run.plan.steps_per_epoch)
        checkpoints = CheckpointManager(run.storage, cfg.train.checkpoint.keep_last,
                                        is_main=self.is_main, model=run.components.model)
        self.trainer = Trainer(run, objects, val_loader=val_loader, scheduler=scheduler,
                               scheduler_component=run.components.scheduler,
                               raw_module=raw_module, checkpoints=checkpoints)

    def _optimizer(self, module: Any) -> Any:
        from .optim import build_optimizer

        model = self.run_ctx.components.model
        optimizer, self.lr = build_optimizer(self.cfg.train.optimizer, module.parameters(),
                                             self.host.catalog, model.default_lr())
        return optimizer

    def _loaders(self) -> tuple[Any, Any]:
        from ..data.loader import balanced_weights, make_loader

        run, cfg, env = self.run_ctx, self.cfg, self.env
        tables = run.prepared.tables
        weights = None
        if cfg.data.sampler == "balanced":
            weights = balanced_weights(tables["train"].column(cfg.data.label_field))
        common = dict(seed=cfg.seed, num_workers=cfg.data.num_workers, rank=env.rank,
                      world_size=env.world_size)
        train = make_loader(tables["train"], run.components.model, run.components.augmenters,
                            batch_size=cfg.train.batch_size, train=True,
                            shuffle=cfg.data.sampler != "sequential", weights=weights,
                            pin_memory=run.device.type == "cuda", **common)
        val = make_loader(tables["val"], run.components.model, [],
                          batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                          train=False, shuffle=False, **common)
        return train, val

    # -- 4. the checkpoint to continue from ------------------------------------------------------

    def restore_checkpoint(self) -> None:
        run = self.run_ctx
        if not run.resumed:
            return
        checkpoints = self.trainer.checkpoints
        if self.is_main:
            checkpoints.clean_partial()  # killed writes of a checkpoint or of best/
        latest = checkpoints.latest()
        if latest is not None:
            self.trainer.restore(latest)
            self.resumed_from = latest

    # -- 5. loggers ------------------------------------------------------------------------------

    def setup_loggers(self) -> None:
        from ..monitor.progress import Progress
        from ..monitor.tensorboard import Scalars

        run, trainer = self.run_ctx, self.trainer
        purge = trainer.state.global_step + 1 if trainer.state.global_step else None
        # events after the checkpoint's step are from the lost attempt; the checkpoint's own
        # step was logged before it was written and stays
        trainer.scalars = Scalars(run.storage.path("tensorboard") if self.is_main else None,
                                  purge_step=purge)
        trainer.progress = Progress(self.progress_mode, run.plan.total_steps, enabled=self.is_main)
        latest = getattr(self, "resumed_from", None)
        if latest is not None:
            st = trainer.state
            trainer.progress.message(f"resuming from {latest.name} (epoch {st.epoch + 1}, "
                                     f"step {st.global_step})")

    # -- 6. train ----------------------------------------------------------------------------------

    def fit(self) -> Any:
        trainer = self.trainer
        self.host.before_run(self.run_ctx)
        t0 = time.perf_counter()
        try:
            state = trainer.fit()
        except BaseException:
            trainer.scalars.close()  # what was logged up to the failure is worth seeing
            raise
        finally:
            trainer.progress.close()
        self.timings["train_s"] = round(time.perf_counter() - t0, 3)
        return state

    # -- 7. report and export ----------------------------------------------------------------------

    def finish(self, state: Any) -> dict[str, Any]:
        from .report import build_report, hparams

        run, trainer = self.run_ctx, self.trainer
        samples = trainer.sync_samples()  # a collective: the samples of every rank
        report = build_report(run, state, self.started, self.timings, samples_seen=samples,
                              memory=trainer.memory_by_epoch)
        extra = _report_extra(run, state)
        report.update(extra)
        if not self.is_main:
            return report
        best = {k: v for k, v in (state.best_metrics or {}).items() if k.startswith("val/")}
        trainer.scalars.hparams(hparams(run, self.lr), best)
        trainer.scalars.close()
        run.storage.write_json("report.json", report)
        manifest = run.storage.read_json_object("manifest.json", what="run manifest")
        manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest.update(extra)
        run.storage.write_json("manifest.json", manifest)
        export = self.cfg.export
        if export is not None and export.formats:  # formats: [] means no export
            report["export"] = self._export(export)
            run.storage.write_json("report.json", report)
        run.storage.flush()  # a run on an object store: what libraries wrote (TensorBoard)
        return report

    def _export(self, export: Any) -> dict[str, Any]:
        """Export from what this process holds: the fitted components, the best weights
        loaded into a fresh module, the resolved config; nothing is read back but weights."""
        from ..export.bundle import export_run
        from .loading import build_with_weights

        run = self.run_ctx
        model = run.components.model
        module = build_with_weights(model, run.storage, seed=self.cfg.seed)
        return export_run(run.run_dir, host=self.host, formats=export.formats,
                          quantize=export.quantize, trained=(model, module),
                          cleaners=run.components.cleaners, config=self._resolved_config())

    def _resolved_config(self) -> dict[str, Any]:
        """The config as ``config.yaml`` holds it (plugin folders made absolute)."""
        loaded, cfg = self.loaded, self.cfg
        resolved = loaded.resolved()
        resolved["plugins"]["paths"] = [str((loaded.base_dir / p).resolve()) for p in cfg.plugins.paths]
        return resolved

    def fail(self, err: BaseException) -> None:
        """Record the failure first, then tell the plugins: a hook that raises cannot hide
        the run's own error or keep report.json from saying ``failed``."""
        from .report import write_failure

        run = self.run_ctx
        if run is None:
            return
        if self.is_main and run.storage.exists("config.yaml"):
            try:
                write_failure(run.storage, err, self.started, run.prepared)
                run.storage.flush()
            except objectstore.ObjectStoreError as up:  # the store is what failed: say so, once
                print(f"privet: warning: the failure report stays in {run.run_dir}: {up}",
                      file=sys.stderr)
        try:
            self.host.on_run_error(run, err)
        except Exception as hook_err:  # noqa: BLE001 - reported, and the run's error wins
            print(f"privet: warning: an on_run_error hook raised {type(hook_err).__name__}: "
                  f"{hook_err}; the run's own error follows", file=sys.stderr)


def _report_extra(run: RunContext, state: Any) -> dict[str, Any]:
    """What plugins put in ``run.report_extra`` (callables evaluated now), and the reason
    a stop check ended the run: sections of both report.json and manifest.json."""
    out = {key: value() if callable(value) else value for key, value in run.report_extra.items()}
    if getattr(state, "stop_reason", None):
        out["stop_reason"] = state.stop_reason
    return out


def _fingerprint_extra(loaded: LoadedConfig) -> dict[str, Any]:
    resolved = loaded.resolved()
    data = dict(resolved["data"])
    data.pop("augmenters", None)
    data.pop("num_workers", None)
    data.pop("prepare_workers", None)  # how many processes prepare it, not what it holds
    data.pop("sampler", None)
    data.pop("cache", None)  # retention is not part of what the cache holds
    data.pop("cache_dir", None)  # where the cache lives, not what it holds
    return {"data": data, "model": resolved["model"]}
