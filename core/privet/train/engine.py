"""A run from pipeline file to report: the engine's entry points.

``run_from_config`` creates (or resumes) a run folder, prepares the data, builds the model
and optimizer, calls the run hooks, trains and writes the report. ``privet run`` and
``privet resume`` are thin wrappers around it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import yaml

from ..config import LoadedConfig, PipelineConfig
from ..errors import ConfigError, PrivetError, TrainingError
from ..pipeline import prepare_config
from ..storage import Storage
from ..runs import check_world_size, load_run, restart_dir
from .context import Components, RunContext

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


def _run_folder(config: PipelineConfig, base_dir: Path, name: str | None) -> Path:
    runs = Path(config.runs_dir)
    runs = runs if runs.is_absolute() else base_dir / runs
    env_dir = os.environ.get("PRIVET_RUN_DIR")
    if env_dir:
        return Path(env_dir)
    stem = name or config.name
    candidate = runs / stem
    k = 2
    while candidate.exists():
        candidate = runs / f"{stem}-{k}"
        k += 1
    return candidate


def _instantiate(loaded: LoadedConfig, catalog: Any) -> Components:
    c = loaded.config
    return Components(
        source=loaded.instantiate(catalog, "data.source"),
        cleaners=[loaded.instantiate(catalog, f"data.cleaners.{i}") for i in range(len(c.data.cleaners))],
        augmenters=[loaded.instantiate(catalog, f"data.augmenters.{i}") for i in range(len(c.data.augmenters))],
        model=loaded.instantiate(catalog, "model"),
        scheduler=loaded.instantiate(catalog, "train.scheduler") if c.train.scheduler else None,
    )


def run_from_config(config: dict[str, Any] | str | Path, *, host: Any | None = None,
                    base_dir: str | Path | None = None, overrides: list[str] = (),
                    name: str | None = None, resume_dir: str | Path | None = None,
                    progress: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Run a pipeline (a file path or a dict shaped like one). Returns (run folder, report)."""
    from . import distributed

    env = None
    ok = False
    try:
        if resume_dir is None:
            host, loaded = prepare_config(config, host=host, base_dir=base_dir, overrides=list(overrides))
            env = distributed.setup(loaded.config.train.device)
            # a restarted torchrun worker continues its job's run: rank 0 decides for all
            found = distributed.broadcast(
                restart_dir(loaded.config, loaded.base_dir) if env.rank == 0 else None, env)
            if found is None:
                result = _run(loaded, host, env, name=name, resume_dir=None, progress=progress)
                ok = True
                return result
            resume_dir = found
        stored = load_run(resume_dir)
        host, loaded = prepare_config(stored.config, host=host, base_dir=stored.base_dir)
        if env is None:
            env = distributed.setup(loaded.config.train.device)
        check_world_size(stored, env.world_size)
        result = _run(loaded, host, env, name=None, resume_dir=resume_dir, progress=progress)
        ok = True
        return result
    finally:
        if env is not None:
            distributed.teardown(env, together=ok)


def _run(loaded: LoadedConfig, host: Any, env: Any, *, name: str | None,
         resume_dir: str | Path | None, progress: str | None) -> tuple[Path, dict[str, Any]]:
    import torch

    from ..data.loader import balanced_weights, make_loader
    from ..data.prepare import Preparer
    from ..monitor.manifest import build_manifest
    from ..monitor.progress import Progress
    from ..monitor.tensorboard import Scalars
    from . import distributed
    from .checkpoint import CheckpointManager
    from .context import TrainingObjects
    from .loop import Trainer, build_optimizer

    cfg = loaded.config
    started = time.time()
    timings: dict[str, float] = {}
    # -- the run folder (rank 0 decides, the others follow) ------------------------------------
    if resume_dir is not None:
        run_dir = Path(resume_dir).resolve()
    else:
        run_dir = distributed.broadcast(_run_folder(cfg, loaded.base_dir, name) if env.rank == 0 else None, env)
    storage = Storage(run_dir)
    components = _instantiate(loaded, host.catalog)
    device = select_device(cfg.train.device, env.local_rank)
    if device.type == "cpu":
        from .malloc import tune_for_training

        tune_for_training()
    run = RunContext(config=cfg, loaded=loaded, run_dir=run_dir, storage=storage, host=host,
                     components=components, rank=env.rank, local_rank=env.local_rank,
                     world_size=env.world_size, device=device)
    seed_everything(cfg.seed, cfg.train.deterministic)
    is_main = env.rank == 0
    if is_main and resume_dir is None:
        storage.makedirs()
        resolved = loaded.resolved()
        resolved["plugins"]["paths"] = [str((loaded.base_dir / p).resolve()) for p in cfg.plugins.paths]
        storage.write_text("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    try:
        # -- data ----------------------------------------------------------------------------
        t0 = time.perf_counter()
        preparer = Preparer(cfg.data, components.source, components.cleaners, components.model,
                            seed=cfg.seed, fingerprint_extra=_fingerprint_extra(loaded),
                            log=lambda m: print(m, file=sys.stderr) if is_main else None)
        runs_root = run_dir.parent
        if is_main:
            prepared = preparer.prepare(runs_root / ".cache")
            distributed.announce(env, "prepared")
        else:  # waits on the store, not a collective: preparation may outlast NCCL's timeout
            distributed.wait_for(env, "prepared")
            prepared = preparer.prepare(runs_root / ".cache")
        run.prepared = prepared
        timings["prepare_s"] = round(time.perf_counter() - t0, 3)
        if is_main:
            link = run_dir / "cache"
            if not link.exists():
                link.symlink_to(prepared.cache.root.resolve(), target_is_directory=True)
            storage.write_json("state/components.json", {
                "cleaners": [{"name": c.name, "state": c.state_dict()} for c in components.cleaners],
                "model": {"name": components.model.name, "state": components.model.state_dict()},
            })
            if resume_dir is None:
                manifest = build_manifest(config_hash=loaded.config_hash(),
                                          data_files=components.source.files(),
                                          plugins=_plugin_versions(host), pipeline_dir=loaded.base_dir,
                                          world_size=env.world_size)
                manifest["pipeline_dir"] = str(loaded.base_dir)
                manifest["pipeline_file"] = loaded.file
                manifest["data_cache"] = str(prepared.cache.root)
                manifest["global_batch"] = cfg.train.batch_size * cfg.train.accumulate * env.world_size
                manifest["elastic_run_id"] = os.environ.get("TORCHELASTIC_RUN_ID")
                storage.write_json("manifest.json", manifest)
        # -- model, optimizer, loaders -------------------------------------------------------------
        torch.manual_seed(cfg.seed)
        raw_module = components.model.build().to(device)
        module = distributed.wrap_module(raw_module, cfg.train.strategy, env, device)
        if cfg.train.compile:
            module = torch.compile(module)
        optimizer = build_optimizer(cfg.train.optimizer, module.parameters())
        weights = None
        if cfg.data.sampler == "balanced":
            weights = balanced_weights(prepared.tables["train"].column(cfg.data.label_field))
        nw = cfg.data.num_workers
        train_loader = make_loader(prepared.tables["train"], components.model, components.augmenters,
                                   batch_size=cfg.train.batch_size, seed=cfg.seed, train=True,
                                   shuffle=cfg.data.sampler != "sequential", num_workers=nw,
                                   weights=weights, rank=env.rank, world_size=env.world_size,
                                   pin_memory=device.type == "cuda")
        val_loader = make_loader(prepared.tables["val"], components.model, [],
                                 batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                                 seed=cfg.seed, train=False, shuffle=False, num_workers=nw,
                                 rank=env.rank, world_size=env.world_size)
        objects = TrainingObjects(module=module, optimizer=optimizer, train_loader=train_loader)
        host.wrap_training(run, objects)
        steps_per_epoch = -(-len(objects.train_loader) // cfg.train.accumulate)
        total_steps = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            total_steps = min(total_steps, cfg.train.max_steps)
        scheduler = None
        if components.scheduler is not None:
            scheduler = components.scheduler.build(objects.optimizer, total_steps, steps_per_epoch)
        checkpoints = CheckpointManager(storage, cfg.train.checkpoint.keep_last) if is_main else None
        latest = CheckpointManager(storage).latest() if resume_dir is not None else None
        if resume_dir is not None and is_main:
            storage.clean_partial("checkpoints")
            storage.clean_partial()  # a killed write of best/ leaves .tmp-best-*
        scalars = Scalars(run_dir / "tensorboard" if is_main else None)
        progress_mode = progress or cfg.train.progress
        bar = Progress(progress_mode, total_steps, enabled=is_main)
        trainer = Trainer(run, objects, val_loader=val_loader, scheduler=scheduler,
                          scheduler_component=components.scheduler, raw_module=raw_module,
                          scalars=scalars, progress=bar, checkpoints=checkpoints)
        if latest is not None:
            trainer.restore(latest)
            if is_main:
                scalars.close()
                # events after the checkpoint's step are from the lost attempt; the
                # checkpoint's own step was logged before it was written and stays
                scalars = Scalars(run_dir / "tensorboard", purge_step=trainer.state.global_step + 1)
                trainer.scalars = scalars
            bar.message(f"resuming from {latest.name} (epoch {trainer.state.epoch + 1}, "
                        f"step {trainer.state.global_step})")
        host.before_run(run)
        t0 = time.perf_counter()
        try:
            state = trainer.fit()
        except BaseException:
            trainer.scalars.close()  # what was logged up to the failure is worth seeing
            raise
        finally:
            bar.close()
        timings["train_s"] = round(time.perf_counter() - t0, 3)
        report = _report(run, trainer, prepared, started, timings)
        if is_main:
            scalars.hparams(_hparams(cfg, env), {k: v for k, v in (state.best_metrics or {}).items()
                                                 if k.startswith("val/")})
            scalars.close()
            storage.write_json("report.json", report)
            manifest = storage.read_json("manifest.json")
            manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            storage.write_json("manifest.json", manifest)
            if cfg.export is not None:
                from ..export.bundle import export_run

                report["export"] = export_run(run_dir, host=host, formats=cfg.export.formats,
                                              quantize=cfg.export.quantize)
                storage.write_json("report.json", report)
        host.after_run(run, report)
        return run_dir, report
    except BaseException as err:
        host.on_run_error(run, err)
        if is_main and storage.exists("config.yaml"):
            _write_failure(storage, err, started)
        raise


def _write_failure(storage: Storage, err: BaseException, started: float) -> None:
    report = storage.read_json("report.json") if storage.exists("report.json") else {}
    report.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                   "timings": {"total_s": round(time.time() - started, 3)}})
    try:
        storage.write_json("report.json", report)
    except OSError:
        pass


def _report(run: RunContext, trainer: Any, prepared: Any, started: float,
            timings: dict[str, float]) -> dict[str, Any]:
    st = trainer.state
    meta = prepared.meta
    timings["total_s"] = round(time.time() - started, 3)
    final = st.history[-1] if st.history else {}
    cfg = run.config.train
    return {
        "status": "stopped_early" if st.stopped_early else "completed",
        "epochs": st.epoch if st.batch_in_epoch == 0 else st.epoch + 1,
        "steps": st.global_step,
        "samples_seen": st.samples_seen,
        "global_batch": cfg.batch_size * cfg.accumulate * run.world_size,
        "world_size": run.world_size,
        "final": {k: v for k, v in final.items() if k != "epoch"},
        "best": st.best_metrics,
        "monitor": cfg.early_stopping.monitor if cfg.early_stopping else "val/loss",
        "history": st.history,
        "skipped_steps": st.skipped_steps,
        "model": run.components.model.report(),
        "data": {
            "read": meta["read"],
            "counts": meta["counts"],
            "examples": meta["examples"],
            "dropped": meta["dropped"],
            "dropped_examples": meta["dropped_examples"],
            "bad": meta.get("bad", 0),
            "dropped_in_training": st.dropped_in_training,
            "cleaners": meta["cleaners"],
            "cache": str(prepared.cache.root),
            "cache_reused": prepared.reused,
        },
        "timings": timings,
    }


def _hparams(cfg: PipelineConfig, env: Any) -> dict[str, Any]:
    t = cfg.train
    return {"model": cfg.model.name, "epochs": t.epochs, "batch_size": t.batch_size,
            "accumulate": t.accumulate, "global_batch": t.batch_size * t.accumulate * env.world_size,
            "lr": t.optimizer.lr, "optimizer": t.optimizer.name, "precision": t.precision,
            "seed": cfg.seed}


def _plugin_versions(host: Any) -> list[dict[str, Any]]:
    return [{"name": n, "distribution": i.distribution, "version": i.version, "status": i.status}
            for n, i in sorted(host.infos.items())]


def _fingerprint_extra(loaded: LoadedConfig) -> dict[str, Any]:
    resolved = loaded.resolved()
    data = dict(resolved["data"])
    data.pop("augmenters", None)
    data.pop("num_workers", None)
    data.pop("sampler", None)
    return {"data": data, "model": resolved["model"]}
