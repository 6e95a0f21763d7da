"""Flower integration: a privet pipeline as a Flower ``ClientApp``, Flower's FedAvg/FedProx
as the ``ServerApp`` (``pip install 'privet[flower]'``).

``privet federate`` simulates sites on one machine; for real multi-site deployments each
site runs a Flower SuperNode and the coordinator a SuperLink. Flower carries the
messages; privet does what a site does, exactly as in ``privet federate``: one round is
a normal engine run of the site's own pipeline, started from the global weights through
:class:`~privet.federate.client.ClientHooks` (FedProx's term included), and what leaves
the site is its weights, its example count and its metrics.

flwr is imported only when ``client_app`` or ``server_app`` is first used (module
``__getattr__``), so ``flwr run`` names them as ``privet.federate.flower:client_app`` and
``privet.federate.flower:server_app`` while the core never needs flwr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from ..storage import Storage
from . import exchange
from .aggregate import FederationError, check_compatible
from .client import ClientHooks, _restore_env, local_overrides, validate
from .config import ClientSpec

#: ``client_app`` and ``server_app`` are built by ``__getattr__``; naming them here is also
#: how ``flwr run``'s static check of the app's components finds them.
__all__ = ["Plan", "ServerSettings", "Site", "client_app", "server_app", "make_client_app",
           "make_server_app", "make_strategy", "run_server"]

#: The global weights a site received, and the weights it sends back, in its work folder.
GLOBAL_IN = "global-in.safetensors"
UPDATE_OUT = "update-out.safetensors"
#: Where run and node settings live, for error messages.
RUN_CONFIG = "[tool.flwr.app.config] (or flwr run --run-config)"
NODE_CONFIG = "the SuperNode's --node-config"


@attrs.define(frozen=True)
class Plan:
    """What the server decides for every site's round (``privet federate``'s fields)."""

    local_epochs: int = 1
    local_steps: int | None = None
    seed: int = 0
    mu: float = 0.0


@attrs.define(frozen=True)
class ServerSettings:
    """The ``ServerApp``'s run config, checked: one error names the key and where it is set."""

    rounds: int = 3
    plan: Plan = Plan()
    aggregation: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    initial_weights: str = ""
    out_dir: str = "flower-run"

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> "ServerSettings":
        agg = str(rc.get("aggregation", "fedavg"))
        mu = float(rc.get("proximal-mu", 0.0))
        steps = int(rc.get("local-steps", 0))
        s = cls(rounds=int(rc.get("num-server-rounds", 3)), aggregation=agg,
                plan=Plan(local_epochs=int(rc.get("local-epochs", 1)), seed=int(rc.get("seed", 0)),
                          local_steps=steps or None, mu=mu),
                fraction_train=float(rc.get("fraction-train", 1.0)),
                fraction_evaluate=float(rc.get("fraction-evaluate", 1.0)),
                initial_weights=str(rc.get("initial-weights", "")),
                out_dir=str(rc.get("out-dir", "flower-run")))
        problems = {"aggregation": agg not in ("fedavg", "fedprox") and "is fedavg or fedprox",
                    "proximal-mu": ((agg == "fedprox") != (mu > 0))
                    and "must be > 0 with fedprox and 0 with fedavg",
                    "num-server-rounds": s.rounds < 1 and "must be at least 1",
                    "local-epochs": s.plan.local_epochs < 1 and "must be at least 1",
                    "local-steps": steps < 0 and "must be 0 (use epochs) or more"}
        for key, problem in problems.items():
            if problem:
                raise FederationError(f"{RUN_CONFIG}: {key} {problem}, got {rc.get(key)!r}")
        return s

    def train_config(self) -> dict[str, Any]:
        """Sent to every site with each round's weights (FedProx adds ``proximal-mu``)."""
        return {"local-epochs": self.plan.local_epochs, "local-steps": self.plan.local_steps or 0,
                "seed": self.plan.seed}


class Site:
    """One SuperNode's privet side: its pipeline, its hooks, its own work folder.

    Nothing here names another site: a site reads its pipeline (and so its data) and
    writes under its work folder, by default ``RUNS_DIR/flower`` of its pipeline.
    """

    def __init__(self, pipeline: str | Path, overrides: list[str] = (), *,
                 work_dir: str | Path | None = None, host: Any = None) -> None:
        from ..plugins import load_plugins

        self.pipeline = Path(pipeline).expanduser().resolve()
        if not self.pipeline.is_file():
            raise FederationError(f"{NODE_CONFIG}: pipeline {str(self.pipeline)!r} not found")
        self.spec = ClientSpec(name="site", pipeline=str(self.pipeline), overrides=list(overrides))
        self.host = host if host is not None else load_plugins()
        self.hooks = ClientHooks()
        self.host.register_plugin(self.hooks, f"flower-site-{id(self)}", origin="federate")
        self.home = Storage(Path(work_dir) if work_dir else self._default_work_dir())

    def _default_work_dir(self) -> Path:
        from ..pipeline import prepare_config
        from ..runs import runs_root

        _host, loaded = prepare_config(self.pipeline, host=self.host, overrides=self.spec.overrides)
        return runs_root(loaded.config, loaded.base_dir) / "flower"

    def train(self, r: int, state: dict[str, Any] | None, plan: Plan) -> tuple[dict, int, dict]:
        """Round ``r`` from ``state`` (None: round 1's seeded weights, as ``privet federate``);
        returns (weights, training examples, the run's final numeric metrics)."""
        from ..train.checkpoint import write_weights
        from ..train.engine import run_from_config

        hooks = self.hooks
        hooks.global_file = self._receive(state)
        hooks.init_seed, hooks.mu = plan.seed, plan.mu
        self.home.remove(exchange.round_dir(r))  # what a failed attempt left
        hooks.active = True
        old = os.environ.get("PRIVET_RUN_DIR")
        os.environ["PRIVET_RUN_DIR"] = str(self.home.path(exchange.round_dir(r)))
        try:
            _run_dir, report = run_from_config(self.pipeline, host=self.host, progress="none",
                                               overrides=local_overrides(plan, self.spec))
        finally:
            hooks.active = False
            _restore_env("PRIVET_RUN_DIR", old)
        write_weights(self.home.path(UPDATE_OUT), hooks.module, hooks.run.components.model,
                      storage=self.home)
        local = {k: float(v) for k, v in (report.get("final") or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        examples = len(hooks.run.prepared.tables["train"])
        return exchange.load_tensors(self.home, UPDATE_OUT), examples, local

    def evaluate(self, state: dict[str, Any]) -> tuple[int, dict[str, float]]:
        """The global weights' metrics on this site's validation split (examples, metrics)."""
        run = self.hooks.run or self._prepare()
        received = self._receive(state)
        if received is None:
            raise FederationError("an evaluate message without weights: nothing to evaluate")
        n, metrics = validate(run, *received)
        return n, {k: float(v) for k, v in metrics.items()}

    def _prepare(self) -> Any:
        """The site's prepared data without training, for an evaluate that comes first in
        its process (a SuperNode may start one process per message): a run folder
        ``evaluate/`` set up as the engine does, reusing the rounds' prepared cache."""
        from ..pipeline import prepare_config
        from ..train.distributed import DistEnv
        from ..train.engine import Recipe

        host, loaded = prepare_config(self.pipeline, host=self.host,
                                      overrides=local_overrides(Plan(), self.spec))
        recipe = Recipe(loaded, host, DistEnv(), progress="none")
        self.home.remove("evaluate")
        old = os.environ.get("PRIVET_RUN_DIR")
        os.environ["PRIVET_RUN_DIR"] = str(self.home.path("evaluate"))
        try:
            recipe.setup_run_folder(None, None)
            recipe.setup_data()
        finally:
            _restore_env("PRIVET_RUN_DIR", old)
            if recipe.lock is not None:
                recipe.lock.release()
        return recipe.run_ctx

    def _receive(self, state: dict[str, Any] | None) -> tuple[Storage, str] | None:
        """The received weights as a safetensors file the engine's loader reads."""
        if not state:
            return None
        self.home.makedirs()
        exchange.save_tensors(self.home, GLOBAL_IN, state)
        return self.home, GLOBAL_IN


# -- the ClientApp ---------------------------------------------------------------------------------

_SITES: dict[tuple[int, int], Site] = {}


def site_for(context: Any) -> Site:
    """The node's :class:`Site`, made once per run and node from its ``--node-config``."""
    key = (int(context.run_id), int(context.node_id))
    if key not in _SITES:
        nc = context.node_config
        if not nc.get("pipeline"):
            raise FederationError(f"{NODE_CONFIG} has no 'pipeline': start the SuperNode with "
                                  f"--node-config \"pipeline='site/pipeline.yaml'\"")
        overrides = [o.strip() for o in str(nc.get("overrides", "")).split(";") if o.strip()]
        _SITES[key] = Site(str(nc["pipeline"]), overrides, work_dir=nc.get("work-dir") or None)
    return _SITES[key]


def plan_from(config: Any) -> Plan:
    """The round's :class:`Plan` from the train message's config record."""
    steps = int(config.get("local-steps", 0))
    return Plan(local_epochs=int(config.get("local-epochs", 1)), local_steps=steps or None,
                seed=int(config.get("seed", 0)), mu=float(config.get("proximal-mu", 0.0)))


def _train(msg: Any, context: Any) -> Any:
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    config = msg.content.config_records.get("config") or {}
    arrays = msg.content.array_records.get("arrays")
    state = _state_dict(arrays) or None
    tensors, n, local = site_for(context).train(int(config.get("server-round", 1)), state,
                                                plan_from(config))
    metrics = MetricRecord({"num-examples": n, **local})
    return Message(RecordDict({"arrays": ArrayRecord(tensors), "metrics": metrics}), reply_to=msg)


def _evaluate(msg: Any, context: Any) -> Any:
    from flwr.app import Message, MetricRecord, RecordDict

    arrays = msg.content.array_records.get("arrays")
    n, metrics = site_for(context).evaluate(_state_dict(arrays))
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": n, **metrics})}),
                   reply_to=msg)


def _state_dict(arrays: Any) -> dict[str, Any]:
    """An ArrayRecord as torch tensors ({} for none). Flower converts only when torch is
    already imported, which a fresh ClientApp or ServerApp process has not done yet."""
    import torch  # noqa: F401 - see above

    return dict(arrays.to_torch_state_dict()) if arrays else {}


def make_client_app() -> Any:
    """A Flower ``ClientApp`` whose train and evaluate are this node's pipeline's."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(_train)
    app.evaluate()(_evaluate)
    return app


# -- the ServerApp ---------------------------------------------------------------------------------

def make_strategy(settings: ServerSettings) -> Any:
    """Flower's own FedAvg or FedProx (weighted by ``num-examples``), refusing updates whose
    tensors do not fit together with privet's one-line error instead of numpy's."""
    from flwr.serverapp.strategy import FedAvg, FedProx

    base = FedProx if settings.aggregation == "fedprox" else FedAvg

    class Checked(base):  # type: ignore[misc, valid-type]
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            updates = [(f"node {m.metadata.src_node_id}", dict(m.content.array_records["arrays"]))
                       for m in replies if not m.has_error() and "arrays" in m.content.array_records]
            if updates:
                check_compatible(updates)
            return super().aggregate_train(server_round, replies)

    kwargs = {"proximal_mu": settings.plan.mu} if base is FedProx else {}
    return Checked(fraction_train=settings.fraction_train,
                   fraction_evaluate=settings.fraction_evaluate, **kwargs)


def initial_arrays(settings: ServerSettings) -> Any:
    """A weights file's tensors, or none: each site then draws round 1's weights from its
    pipeline's model with the run's seed (the same weights everywhere), so the server
    needs neither data nor the model's data-dependent shapes."""
    from flwr.app import ArrayRecord

    if not settings.initial_weights:
        return ArrayRecord()
    path = Path(settings.initial_weights).expanduser().resolve()
    if not path.is_file():
        raise FederationError(f"{RUN_CONFIG}: initial-weights {str(path)!r} not found")
    return ArrayRecord(exchange.load_tensors(Storage(path.parent), path.name))


def run_server(grid: Any, context: Any) -> dict[str, Any]:
    """The ``ServerApp``'s main: the rounds, then ``OUT_DIR/global.safetensors`` and
    ``OUT_DIR/report.json`` (the aggregated train and validation metrics per round)."""
    from flwr.app import ConfigRecord

    settings = ServerSettings.from_run_config(dict(context.run_config))
    result = make_strategy(settings).start(
        grid=grid, initial_arrays=initial_arrays(settings), num_rounds=settings.rounds,
        train_config=ConfigRecord(settings.train_config()))
    out = Storage(Path(settings.out_dir).expanduser().resolve())
    out.makedirs()
    if result.arrays is not None and len(result.arrays):
        exchange.save_tensors(out, exchange.GLOBAL, _state_dict(result.arrays))
    report = {"status": "completed", "kind": "flower", "rounds": settings.rounds,
              "aggregation": settings.aggregation, "mu": settings.plan.mu,
              "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
              "history": [{"round": r, **dict(m)}
                          for r, m in sorted(result.evaluate_metrics_clientapp.items())]}
    out.write_json("report.json", report)
    return report


def make_server_app() -> Any:
    """A Flower ``ServerApp`` running :func:`run_server`."""
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(run_server)
    return app


def __getattr__(name: str) -> Any:
    """``client_app`` and ``server_app``, built (and flwr imported) on first use."""
    makers = {"client_app": make_client_app, "server_app": make_server_app}
    if name not in makers:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_flwr()
    globals()[name] = app = makers[name]()
    return app


def require_flwr() -> None:
    """One line naming the extra when flwr is not installed, instead of a traceback."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise FederationError("the Flower integration needs flwr: pip install 'privet[flower]' "
                              "(in its own environment; see docs/federated.md)")
