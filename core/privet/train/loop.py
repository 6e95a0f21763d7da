"""The training loop: one straight loop with named steps, hooks at clear points.

forward -> backward (accumulated) -> normalise by the window's item count -> clip ->
optimizer step -> scheduler -> log -> checkpoint; validate and early-stop per epoch.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import attrs

from ..errors import TrainingError
from ..errors import CheckpointError
from ..monitor.memory import MemoryMonitor, is_out_of_memory, out_of_memory_error
from .checkpoint import CheckpointManager, capture_rng, restore_rng
from .context import TrainingObjects


#: fp16: this many skipped steps in a row (inf/NaN gradients every time) stop the run.
MAX_SKIPS_IN_A_ROW = 50


@attrs.define
class LoopState:
    """Everything about progress that a checkpoint must carry (besides tensors)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    best_metrics: dict[str, float] = attrs.field(factory=dict)
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = attrs.field(factory=list)
    dropped_in_training: dict[str, int] = attrs.field(factory=dict)
    skipped_steps: int = 0
    samples_seen: int = 0
    #: why a stop check (``TrainingObjects.stop_checks``) ended the run, if one did
    stop_reason: str | None = None


class Trainer:
    """Runs epochs for a :class:`privet.RunContext`; checkpoint I/O is the
    :class:`CheckpointManager`'s, logging the loggers' (set by the recipe before ``fit``)."""

    def __init__(self, run: Any, objects: TrainingObjects, *, val_loader: Any, scheduler: Any,
                 scheduler_component: Any, raw_module: Any, checkpoints: CheckpointManager) -> None:
        import torch

        self.run = run
        self.cfg = run.config.train
        self.model = run.components.model
        self.objects = objects
        self.val_loader = val_loader
        self.scheduler = scheduler
        self.scheduler_component = scheduler_component
        self.raw_module = raw_module
        self.scalars: Any = None
        self.progress: Any = None
        self.checkpoints = checkpoints
        self.state = LoopState()
        self.device = run.device
        precision = self.cfg.precision
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.scaler_enabled = self.scaler.is_enabled()
        # A non-finite loss stops the run, except in fp16 where the GradScaler skips the
        # step itself (and halves its scale).
        self.guard_loss = not self.scaler_enabled
        self.train_metrics = self.model.metrics("train")
        # one batch per optimizer step on one process: the mean loss's plain backward
        self.single_batch_steps = (self.cfg.accumulate == 1 and run.world_size == 1
                                   and not objects.sum_loss and objects.backward is None)
        self.sharded = run.world_size > 1 and self.cfg.strategy == "fsdp"
        self._skips_in_a_row = 0
        self._local_samples = 0  # this rank's samples since the last sync_samples
        self.total_steps = run.plan.total_steps
        self.memory = MemoryMonitor(self.device)
        # readings of this process per epoch (report.json "memory"): measurements of the
        # machine, not training state, so not checkpointed (resume stays bit-identical)
        self.memory_by_epoch: list[dict[str, float]] = []

    # -- helpers ------------------------------------------------------------------------------

    def _autocast(self) -> Any:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: Any) -> Any:
        import torch

        if self.device.type == "cpu":  # loaders produce CPU tensors: nothing to move
            return batch
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    def _params(self) -> list[Any]:
        return [p for g in self.objects.optimizer.param_groups for p in g["params"]]

    # -- resume ---------------------------------------------------------------------------------

    def restore(self, path: Any) -> None:
        if self.sharded:
            tensors, plain = CheckpointManager.load_sharded(path, self.objects.module,
                                                            self.objects.optimizer)
        else:
            tensors, plain = CheckpointManager.load(path, self.raw_module, self.model)
        try:
            if not self.sharded:
                self.objects.optimizer.load_state_dict(tensors["optimizer"])
            if self.scheduler is not None and "scheduler" in tensors:
                self.scheduler.load_state_dict(tensors["scheduler"])
            if "scaler" in tensors:
                self.scaler.load_state_dict(tensors["scaler"])
            rank, world = self.run.rank, self.run.world_size
            per_rank = plain["rng"].get("per_rank")
            if per_rank is not None and len(per_rank) == world and "rng_per_rank" in tensors:
                restore_rng(tensors["rng_per_rank"][rank], per_rank[rank])
            else:
                restore_rng(tensors["rng"], plain["rng"])
            self.state = LoopState(**plain["loop"])
            self._restore_extra(tensors.get("extra", {}))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"{path}: the checkpoint's state does not fit this run "
                                  f"({type(err).__name__}: {err}); it is damaged or from another "
                                  f"pipeline") from err

    def _restore_extra(self, saved: dict[str, Any]) -> None:
        """``TrainingObjects.extra_state``: every object's saved state, or a clear error."""
        missing = sorted(set(self.objects.extra_state) - set(saved))
        if missing:
            raise KeyError(f"no saved state for {', '.join(missing)} (added by a plugin since "
                           f"the checkpoint was written)")
        for name, obj in self.objects.extra_state.items():
            obj.load_state_dict(saved[name])

    def save_checkpoint(self) -> None:
        """Called on every rank (RNG states are gathered); rank 0 writes."""
        self._check_losses()
        self.scalars.flush()  # a resumed run continues the event file from this step
        rng_tensors, rng_plain = capture_rng()
        per_rank = None
        if self.run.world_size > 1:
            # ranks draw different amounts of randomness (uneven last batches): keep each one's
            import torch.distributed as dist

            per_rank = [None] * self.run.world_size
            dist.all_gather_object(per_rank, (rng_tensors, rng_plain))
        self._check_finite_weights()
        self.sync_samples()
        tensors: dict[str, Any] = {"rng": rng_tensors}
        if per_rank is not None:
            tensors["rng_per_rank"] = [t for t, _ in per_rank]
            rng_plain = dict(rng_plain, per_rank=[p for _, p in per_rank])
        if self.scheduler is not None:
            tensors["scheduler"] = self.scheduler.state_dict()
        if self.scaler.is_enabled():
            tensors["scaler"] = self.scaler.state_dict()
        if self.objects.extra_state:
            tensors["extra"] = {name: obj.state_dict() for name, obj in self.objects.extra_state.items()}
        plain = {"rng": rng_plain, "loop": attrs.asdict(self.state)}
        step = self.state.global_step
        if self.sharded:
            path = self.checkpoints.save_sharded(step, self.objects.module, self.objects.optimizer,
                                                 tensors, plain)
        elif self.run.is_main:
            tensors["optimizer"] = self.objects.optimizer.state_dict()
            path = self.checkpoints.save(step, self.raw_module, tensors, plain)
        else:
            return
        if self.run.is_main:
            self.run.host.after_checkpoint(self.run, path, step)

    def sync_samples(self) -> int:
        """Add every rank's samples since the last call to ``state.samples_seen`` (a
        collective in a distributed run), so the count is the world's on every rank."""
        local = self._local_samples
        self._local_samples = 0
        if self.run.world_size > 1:
            import torch
            import torch.distributed as dist

            box = torch.tensor([local], dtype=torch.int64)
            dist.all_reduce(box)
            local = int(box.item())
        self.state.samples_seen += local
        return self.state.samples_seen

    def full_state_dict(self) -> dict[str, Any] | None:
        """The whole model's weights on rank 0 (a collective under FSDP)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.objects.module,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _check_finite_weights(self) -> None:
        import torch

        for name, p in self.raw_module.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if not bool(torch.isfinite(local).all()):
                raise TrainingError(f"parameter {name} is not finite at step {self.state.global_step}; "
                                    f"no checkpoint was written. Lower train.optimizer.lr or set "
                                    f"train.clip_grad_norm")

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> LoopState:
        """Train; running out of device memory ends in one line naming what lowers it."""
        try:
            return self._fit()
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            st = self.state
            raise out_of_memory_error(err, device=self.device, train=self.cfg,
                                      model_options=getattr(self.model, "options", None),
                                      where=f"at step {st.global_step + 1} (epoch {st.epoch + 1})"
                                      ) from err

    def _fit(self) -> LoopState:
        cfg = self.cfg
        st = self.state
        loader = self.objects.train_loader
        sampler = loader.batch_sampler
        accumulate, log_every = cfg.accumulate, cfg.log_every_n_steps
        every = cfg.checkpoint.every_n_steps
        step_scheduler = self.scheduler is not None and self.scheduler_component.interval == "step"
        losses = self.train_metrics
        on_cpu = self.device.type == "cpu"  # loaders produce CPU tensors: nothing to move
        last_log = time.perf_counter()
        samples_since_log = 0
        while st.epoch < cfg.epochs and not st.stopped_early and not self._done():
            sampler.set_epoch(st.epoch, st.batch_in_epoch)
            self.memory.start_epoch()
            self.objects.module.train()
            batches = iter(loader)
            exhausted = False
            while not exhausted and not self._done():
                # 1. gather one accumulation window of micro-batches
                window = []
                for _ in range(accumulate):
                    loaded = next(batches, None)
                    if loaded is None:
                        exhausted = True
                        break
                    st.batch_in_epoch += 1
                    if loaded.dropped:
                        for reason, n in loaded.dropped.items():
                            st.dropped_in_training[reason] = st.dropped_in_training.get(reason, 0) + n
                    if loaded.batch is not None:
                        window.append(loaded.batch if on_cpu else self._to_device(loaded.batch))
                if not window:
                    continue
                # 2. forward + backward, 3. normalise, 4. clip, 5. step
                loss_sum, count, n_samples = self._forward_backward(window)
                losses.add_loss(loss_sum, count)  # checked for NaN/inf at the next log
                grad_norm = self._optimizer_step()
                st.global_step += 1
                self._local_samples += n_samples
                samples_since_log += n_samples
                if step_scheduler:
                    self.scheduler.step()
                stop = self._stop_reason()
                # 6. log every N steps: the one host sync of the hot path
                if st.global_step % log_every == 0 or st.global_step == self.total_steps or stop:
                    self._check_losses()
                    now = time.perf_counter()
                    logged = losses.compute()
                    logged["train/lr"] = self.objects.optimizer.param_groups[0]["lr"]
                    logged["train/samples_per_s"] = samples_since_log / max(now - last_log, 1e-9)
                    if grad_norm is not None:
                        logged["train/grad_norm"] = float(grad_norm)
                    logged.update(self._extra_metrics())
                    self.scalars.log(logged, st.global_step)
                    self.progress.update(st.global_step, st.epoch, {"loss": logged.get("train/loss", 0.0)})
                    losses.reset()
                    last_log, samples_since_log = now, 0
                if stop:  # a plugin's stop check: end this epoch cleanly, then stop
                    st.stop_reason, st.stopped_early = stop, True
                    self.progress.message(f"stopping: {stop}")
                    break
                # 7. checkpoint every N steps (at the end of an epoch or of max_steps,
                # _end_epoch writes it once validation has run, so it is not written twice)
                if every and st.global_step % every == 0 and not (
                        exhausted or st.batch_in_epoch >= len(loader) or self._done()):
                    self.save_checkpoint()
            if exhausted or self._done() or st.stop_reason:
                self._end_epoch(finished=exhausted)
        return st

    def _stop_reason(self) -> str | None:
        """The first reason a ``TrainingObjects.stop_checks`` callable gives, if any."""
        for check in self.objects.stop_checks:
            reason = check()
            if reason:
                return reason
        return None

    def _extra_metrics(self) -> dict[str, float]:
        """What the ``TrainingObjects.metrics`` callables report now."""
        out: dict[str, float] = {}
        for metric in self.objects.metrics:
            out.update(metric())
        return out

    def _done(self) -> bool:
        return bool(self.cfg.max_steps) and self.state.global_step >= self.cfg.max_steps

    def _check_losses(self) -> None:
        """Stop on the first non-finite training loss since the last log.

        Checked at each log and before anything is saved, not every step (a host sync
        per step is a visible cost on small models): a run stops at most
        ``log_every_n_steps`` steps late, naming the step where it went wrong, and a
        NaN never reaches a checkpoint. Under fp16 the GradScaler skips such steps.
        """
        if not self.guard_loss:
            return
        losses = self.train_metrics
        pos = losses.first_nonfinite()
        if pos is not None:
            st = self.state
            step = st.global_step - len(losses.losses) + pos + 1
            raise TrainingError(f"loss is {float(losses.losses[pos])} at step {step} (epoch {st.epoch + 1}); "
                                f"stopping before it reaches a checkpoint. Lower train.optimizer.lr, set "
                                f"train.clip_grad_norm, or use precision fp16 (skips such steps)")

    def _forward_backward(self, window: list[Any]) -> tuple[Any, Any, int]:
        """Forward and backward over one accumulation window; returns the window's summed
        loss (detached), its item count and its number of samples."""
        import torch

        module = self.objects.module
        model = self.model
        if self.single_batch_steps:
            # the plain-loop path: mean loss, one backward (bit-identical to a hand-written loop)
            batch = window[0]
            if self.amp_dtype is None:
                out = model.step(module, batch)
            else:
                with self._autocast():
                    out = model.step(module, batch)
            loss_sum = out.loss_sum
            if self.scaler_enabled:
                self.scaler.scale(loss_sum / out.count).backward()
            else:  # d(mean)/d(sum) = 1/count, without a division node in the graph
                loss_sum.backward(self._inverse(loss_sum, out.count))
            return loss_sum.detach(), out.count, model.batch_size_of(batch)
        distributed = self.run.world_size > 1
        micro_step = self.objects.micro_step
        backward = self.objects.backward
        n_samples = 0
        total_loss: Any = 0.0
        total_count: Any = 0
        for i, batch in enumerate(window):
            sync = contextlib.nullcontext()
            if distributed and i < len(window) - 1 and hasattr(module, "no_sync"):
                sync = module.no_sync()
            with sync:
                with self._autocast():
                    out = model.step(module, batch)
                if backward is None:
                    self.scaler.scale(out.loss_sum).backward()
                else:  # a plugin's backward (TrainingObjects.backward)
                    backward(out)
            if micro_step is not None and i < len(window) - 1:
                micro_step()
            total_loss = total_loss + out.loss_sum.detach()
            total_count = total_count + out.count
            n_samples += model.batch_size_of(batch)
        if self.objects.sum_loss:  # the optimizer normalises (Opacus: by the expected batch)
            return total_loss, total_count, n_samples
        # normalise by the items of the whole window (over all ranks): exact accumulation
        denom = torch.as_tensor(total_count, dtype=torch.float32, device=self.device)
        if distributed:
            import torch.distributed as dist

            dist.all_reduce(denom)
            denom = denom / self.run.world_size  # DDP already averaged the gradients
        # exact: a count of items (over the world size). A device tensor avoids a host
        # sync per step; FSDP's DTensor gradients take a plain number.
        scale = float(denom) if self.sharded else denom
        grads = [p.grad for p in self._params() if p.grad is not None]
        for g in grads:
            g.div_(scale if self.sharded else scale.to(g.dtype))
        return total_loss, total_count, n_samples

    @staticmethod
    def _inverse(like: Any, count: Any) -> Any:
        """``1 / count`` as a 0-d tensor like ``like``, rounded as a float32 division
        would be (so the gradients are bit-identical to those of a mean loss)."""
        import torch

        if type(count) is int and 0 < count < 1 << 24 and like.dtype == torch.float32:
            # 1/n rounded to double, then to float32, equals 1/n rounded to float32 once:
            # the binary expansion of 1/n has no run of identical bits longer than log2(n)
            return torch.full((), 1.0 / count, dtype=like.dtype, device=like.device)
        return torch.ones_like(like).div_(count)

    def _optimizer_step(self) -> Any:
        optimizer = self.objects.optimizer
        grad_norm = None
        if self.cfg.clip_grad_norm:
            import torch

            self.scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params(), self.cfg.clip_grad_norm)
        if self.scaler_enabled:
            before = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < before:  # inf/NaN gradients: the step was skipped
                self.state.skipped_steps += 1
                self._skips_in_a_row += 1
                if self._skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                    raise TrainingError(
                        f"{self._skips_in_a_row} optimizer steps in a row were skipped for inf/NaN "
                        f"gradients (step {self.state.global_step + 1}); the model has diverged. "
                        f"Lower train.optimizer.lr or set train.clip_grad_norm")
            else:
                self._skips_in_a_row = 0
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _end_epoch(self, *, finished: bool) -> None:
        self._check_losses()
        st = self.state
        metrics = self.validate()
        metrics["epoch"] = st.epoch + 1
        st.history.append(metrics)
        memory = self.memory.end_epoch()
        self.memory_by_epoch.append({"epoch": st.epoch + 1, **memory})
        self.scalars.log({**{k: v for k, v in metrics.items() if k != "epoch"}, **memory,
                          **self._extra_metrics()}, st.global_step)
        self.scalars.flush()
        self.progress.message(f"epoch {st.epoch + 1}: " + " ".join(
            f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/")))
        if self.scheduler is not None:
            interval = self.scheduler_component.interval
            if interval == "epoch":
                self.scheduler.step()
            elif interval == "metric":
                self.scheduler.step(self._monitored(metrics, self.scheduler_component.monitor))
        self._early_stopping(metrics)
        self.run.host.after_epoch(self.run, st.epoch, metrics)
        if finished:
            st.epoch += 1
            st.batch_in_epoch = 0
        self.save_checkpoint()

    def _monitored(self, metrics: dict[str, float], key: str) -> float:
        if key not in metrics:
            raise TrainingError(f"monitored metric {key!r} does not exist (available: "
                                f"{', '.join(sorted(k for k in metrics if '/' in k))}); fix "
                                f"train.early_stopping.monitor or the scheduler's monitor")
        return metrics[key]

    def _early_stopping(self, metrics: dict[str, float]) -> None:
        es = self.cfg.early_stopping
        st = self.state
        key = es.monitor if es is not None else "val/loss"
        if key not in metrics:
            if es is not None:
                self._monitored(metrics, key)
            return
        value = metrics[key]
        mode = es.mode if es is not None else "min"
        delta = es.min_delta if es is not None else 0.0
        improved = st.best is None or (value < st.best - delta if mode == "min" else value > st.best + delta)
        if improved:
            st.best = value
            st.best_metrics = dict(metrics)
            st.bad_epochs = 0
            self._save_best()
        else:
            st.bad_epochs += 1
            if es is not None and st.bad_epochs >= es.patience:
                st.stopped_early = True
                self.progress.message(f"early stopping: {key} has not improved for {st.bad_epochs} epochs")

    def _save_best(self) -> None:
        """The best epoch's full weights, for export and ``load_trained``."""
        self._check_finite_weights()
        full = self.full_state_dict()  # collective: every rank takes part
        if self.run.is_main:
            self.checkpoints.save_best(self.raw_module, full)

    def validate(self) -> dict[str, float]:
        import torch

        if self.val_loader is None or len(self.val_loader) == 0:
            return {}
        module = self.objects.module
        module.eval()
        acc = self.model.metrics("val")
        self.val_loader.batch_sampler.set_epoch(0)
        with torch.no_grad():
            for loaded in self.val_loader:
                if loaded.batch is None:
                    continue
                with self._autocast():
                    out = self.model.step(module, self._to_device(loaded.batch))
                acc.update(out)
        acc.all_reduce()
        module.train()
        return acc.compute()
