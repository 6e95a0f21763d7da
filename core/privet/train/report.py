"""What a run writes about itself at the end: ``report.json``, its TensorBoard hparams,
and the failure report. Built from the run context and the loop state; no I/O of its own
except through the run's storage."""

from __future__ import annotations

import time
from typing import Any

from ..monitor.memory import memory_section
from ..storage import Storage
from .context import RunContext


def build_report(run: RunContext, state: Any, started: float, timings: dict[str, float],
                 *, samples_seen: int, memory: list[dict[str, float]] = ()) -> dict[str, Any]:
    """The report of a finished run (every rank builds it; rank 0 writes it)."""
    prepared = run.prepared
    meta = prepared.meta
    timings["total_s"] = round(time.time() - started, 3)
    final = state.history[-1] if state.history else {}
    cfg = run.config.train
    assert run.plan is not None
    return {
        "status": "stopped_early" if state.stopped_early else "completed",
        "epochs": state.epoch if state.batch_in_epoch == 0 else state.epoch + 1,
        "steps": state.global_step,
        "samples_seen": samples_seen,
        "global_batch": run.plan.global_batch,
        "world_size": run.world_size,
        "final": {k: v for k, v in final.items() if k != "epoch"},
        "best": state.best_metrics,
        "monitor": cfg.early_stopping.monitor if cfg.early_stopping else "val/loss",
        "history": state.history,
        "skipped_steps": state.skipped_steps,
        "model": run.components.model.report(),
        "data": {**data_section(prepared), "dropped_in_training": state.dropped_in_training},
        "timings": timings,
        "memory": memory_section(memory, run.device),
    }


def data_section(prepared: Any) -> dict[str, Any]:
    """Record counts and drops by reason: audit evidence, also in a failed run's report."""
    meta = prepared.meta
    return {
        "read": meta["read"],
        "counts": meta["counts"],
        "examples": meta["examples"],
        "dropped": meta["dropped"],
        "dropped_examples": meta["dropped_examples"],
        "bad": meta.get("bad", 0),
        "cleaners": meta["cleaners"],
        "cache": str(prepared.cache.root),
        "cache_reused": prepared.reused,
    }


def write_failure(storage: Storage, err: BaseException, started: float,
                  prepared: Any | None = None) -> None:
    """Mark the run failed in report.json (keeping what an earlier attempt wrote)."""
    try:
        report = storage.read_json("report.json") if storage.exists("report.json") else {}
    except (OSError, ValueError):
        report = {}
    if not isinstance(report, dict):
        report = {}
    report.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                   "timings": {"total_s": round(time.time() - started, 3)}})
    if prepared is not None and "data" not in report:
        report["data"] = data_section(prepared)
    try:
        storage.write_json("report.json", report)
    except OSError:
        pass  # a read-only or full run folder: the error itself is what the user sees


def hparams(run: RunContext, lr: float) -> dict[str, Any]:
    cfg, t = run.config, run.config.train
    assert run.plan is not None
    return {"model": cfg.model.name, "epochs": t.epochs, "batch_size": t.batch_size,
            "accumulate": t.accumulate, "global_batch": run.plan.global_batch,
            "lr": lr, "optimizer": t.optimizer.name, "precision": t.precision, "seed": cfg.seed}


def plugin_versions(host: Any) -> list[dict[str, Any]]:
    return [{"name": n, "distribution": i.distribution, "version": i.version, "status": i.status}
            for n, i in sorted(host.infos.items())]
