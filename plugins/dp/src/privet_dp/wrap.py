"""DP-SGD applied to a run's training objects: what the ``wrap_training`` hook does.

The order: refuse what DP-SGD cannot honour (one line each) -> make the module fit for
per-example gradients (no BatchNorm; DPLSTM) -> Poisson sampling replaces the engine's
sampler -> the noise multiplier from the target (Opacus' ``get_noise_multiplier``) ->
Opacus' per-sample gradient hooks on the module (or its ghost clipping hooks), its
``DPOptimizer`` around the optimizer, its accountant on the optimizer's steps -> the
loop's extension points: the accountant in ``extra_state`` (checkpointed), epsilon in
``metrics``, the budget in ``stop_checks``, Opacus' virtual steps in ``micro_step``,
``sum_loss``, ghost clipping's two passes in ``backward``; and the ``privacy`` section of
report.json and manifest.json.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import privet

from .accounting import Accountant, budget_steps, noise_for_target
from .ghost import GhostBackward, check_no_tied_parameters, contiguous_embedding_inputs
from .modules import BatchFirstCheck, check_no_batch_norm, check_validator, fix_in_place, no_inplace_activations
from .sampling import PoissonBatchSampler, PoissonLoader, plan_poisson
from .secrecy import SecretRandomness

#: how the report names the RDP -> (epsilon, delta) conversion (see accounting.py)
RDP_CONVERSION = "Balle et al. 2020, Theorem 21 (opacus.accountants.analysis.rdp.get_privacy_spent)"


def refuse_unsupported(run: Any) -> None:
    """Settings under which DP-SGD's guarantee or Opacus' hooks would not hold."""
    train, data = run.config.train, run.config.data
    if train.precision == "fp16":
        raise privet.ConfigError("DP-SGD clips per-example gradients, which fp16 loss scaling "
                                 "distorts; use precision fp32 or bf16", path="train.precision")
    if train.clip_grad_norm:
        raise privet.ConfigError("DP-SGD clips each example's gradient to privacy.max_grad_norm; "
                                 "remove train.clip_grad_norm", path="train.clip_grad_norm")
    if train.compile:
        raise privet.ConfigError("torch.compile does not run Opacus' per-sample gradient hooks; "
                                 "set train.compile: false for DP-SGD", path="train.compile")
    if run.world_size > 1 and train.strategy == "fsdp":
        raise privet.ConfigError("DP-SGD runs distributed with DDP (Opacus' DPDDP), not FSDP; "
                                 "set train.strategy: ddp", path="train.strategy")
    if data.sampler == "balanced":
        raise privet.ConfigError("DP-SGD's accounting assumes uniform Poisson sampling; "
                                 "data.sampler: balanced would break it", path="data.sampler")


class PrivateTraining:
    """The DP state of one run and the callbacks the loop calls."""

    def __init__(self, run: Any, objects: Any, options: Any) -> None:
        self.options = options
        cfg = run.config.train
        world = run.world_size
        self.n = len(objects.train_loader.dataset)
        if options.delta >= 1.0 / self.n:
            raise privet.ConfigError(f"delta {options.delta} is not below 1/N = {1.0 / self.n:.3g} "
                                     f"(N = {self.n} training examples): it would allow one "
                                     f"example to be released outright", path="privacy.delta")
        self.sample_rate, steps_per_epoch = plan_poisson(self.n, cfg.batch_size, cfg.accumulate, world)
        self.randomness = SecretRandomness(run, options.randomness)
        if options.poisson_sampling:
            sampler = PoissonBatchSampler(self.n, self.sample_rate, steps_per_epoch, cfg.accumulate,
                                          seed=run.config.seed, rank=run.rank, world_size=world)
            self.randomness.bind(sampler)
            objects.train_loader = PoissonLoader(objects.train_loader, sampler)
        else:  # the engine's shuffled batches: the accountant's rate is then an approximation
            steps_per_epoch = -(-len(objects.train_loader) // cfg.accumulate)
        planned = steps_per_epoch * cfg.epochs
        self.planned = min(planned, cfg.max_steps) if cfg.max_steps else planned
        name = options.accountant
        self.noise = options.noise_multiplier
        if self.noise is None:
            self.noise = noise_for_target(name, options.target_epsilon, options.delta,
                                          self.sample_rate, self.planned)
        self.budget = None
        if options.target_epsilon is not None:
            self.budget = budget_steps(name, options.target_epsilon, options.delta, self.noise,
                                       self.sample_rate, self.planned)
            if self.budget == 0:
                raise privet.ConfigError(
                    f"with noise_multiplier {self.noise:g} and sample rate {self.sample_rate:.3g} a "
                    f"single step spends more than target_epsilon {options.target_epsilon:g}; raise "
                    f"the noise or the target", path="privacy.target_epsilon")
        self.accountant = Accountant(name, options.delta)
        # the mean over the expected global batch, whatever size each Poisson batch has
        self.expected_batch = self.sample_rate * self.n / world
        self.optimizer: Any = None
        self.hooks: Any = None  # Opacus' GradSampleHooks: kept alive with the run
        self.batch_first: Any = None

    # -- the loop's callbacks ----------------------------------------------------------------

    def virtual_step(self) -> None:
        """Opacus' virtual step between micro-batches: clip and accumulate this micro-batch's
        per-example gradients, free them, add no noise and take no step."""
        self.optimizer.signal_skip_step(do_skip=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def metrics(self) -> dict[str, float]:
        return self.accountant.for_log()

    def stop_check(self) -> str | None:
        """Stop before a step that would take epsilon past the target."""
        if self.budget is not None and self.accountant.steps >= self.budget < self.planned:
            return (f"privacy budget reached: epsilon {self.accountant.epsilon():.4g} of target "
                    f"{self.options.target_epsilon:g} after {self.accountant.steps} steps")
        return None

    def report(self) -> dict[str, Any]:
        o = self.options
        return {"mechanism": "dp-sgd", "epsilon": self.accountant.epsilon(), "delta": o.delta,
                "target_epsilon": o.target_epsilon, "noise_multiplier": self.noise,
                "max_grad_norm": o.max_grad_norm, "sample_rate": self.sample_rate,
                "steps": self.accountant.steps, "planned_steps": self.planned,
                "budget_steps": self.budget, "accountant": o.accountant,
                "poisson_sampling": o.poisson_sampling, "grad_sample_mode": o.grad_sample_mode,
                "randomness": o.randomness,
                "expected_batch_size": self.expected_batch, "training_examples": self.n,
                "opacus_version": version("opacus"),
                **({"rdp_conversion": RDP_CONVERSION} if o.accountant == "rdp" else {})}


def make_private(run: Any, objects: Any, options: Any) -> PrivateTraining:
    """Apply DP-SGD to ``objects`` in place (see the module docstring for the order)."""
    from opacus.grad_sample import prepare_module
    from opacus.optimizers import get_optimizer_class

    refuse_unsupported(run)
    module = objects.module
    raw = module.module if type(module).__name__ == "DistributedDataParallel" else module
    raw.train()
    check_no_batch_norm(raw, run.components.model.name)
    fix_in_place(raw, objects.optimizer)
    no_inplace_activations(raw)
    check_validator(raw)
    mode = options.grad_sample_mode
    ghost = {"max_grad_norm": options.max_grad_norm} if mode == "ghost" else {}
    if ghost:
        check_no_tied_parameters(raw, run.components.model.name)
        contiguous_embedding_inputs(raw)
    private = PrivateTraining(run, objects, options)
    try:
        private.hooks = prepare_module(raw, mode, wrap_model=False, batch_first=True,
                                       loss_reduction="sum", strict=True, **ghost)
    except NotImplementedError as err:
        raise privet.ConfigError(f"Opacus cannot compute per-example gradients for this model: {err}",
                                 path="privacy.grad_sample_mode") from err
    private.batch_first = BatchFirstCheck(raw)
    distributed = run.world_size > 1
    if distributed:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

        objects.module = DifferentiallyPrivateDistributedDataParallel(raw)
    optimizer_cls = get_optimizer_class(clipping="flat", distributed=distributed, grad_sample_mode=mode)
    private.optimizer = optimizer_cls(objects.optimizer, noise_multiplier=private.noise,
                                      max_grad_norm=options.max_grad_norm,
                                      expected_batch_size=private.expected_batch, loss_reduction="mean",
                                      generator=private.randomness.generator)
    private.optimizer.attach_step_hook(private.accountant.hook(private.sample_rate))
    objects.optimizer = private.optimizer
    objects.sum_loss = True
    objects.micro_step = private.virtual_step
    if ghost:  # Opacus' two backward passes over StepOutput.per_example (ghost.py)
        objects.backward = GhostBackward(private.hooks, private.optimizer, run.components.model.name)
    objects.extra_state["privacy_accountant"] = private.accountant
    objects.extra_state["privacy_randomness"] = private.randomness
    objects.metrics.append(private.metrics)
    objects.stop_checks.append(private.stop_check)
    run.report_extra["privacy"] = private.report
    return private


__all__ = ["PrivateTraining", "make_private", "refuse_unsupported"]
