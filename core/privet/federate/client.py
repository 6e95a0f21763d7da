"""One federated client: a process that trains its own pipeline on its own data.

Started by the coordinator as ``python -m privet.federate.client RUN_DIR CLIENT``, it
reads one JSON command per line on stdin and answers one JSON line on its original
stdout (everything else it prints goes to stderr). What it is given is its pipeline
file and the global weights of the round; what it sends back is its weights and its
example count. Its data, its cleaners' fitted state and its run folders stay its own.

Training is a normal engine run (:func:`privet.train.engine.run_from_config`): cleaning,
the prepared cache, TensorBoard, checkpoints and the pipeline's own ``privacy:`` section
work as in ``privet run``. A ``wrap_training`` hook registered in this process loads
the global weights before training starts and, for FedProx, adds the proximal term.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ..hookspecs import hookimpl
from ..storage import Storage
from . import exchange
from .aggregate import add_proximal_term
from .config import ClientSpec, LoadedFederation, load_stored_federation


class ClientHooks:
    """The client's ``wrap_training``: start from the global weights, add FedProx's term.

    Runs first (``tryfirst``), before a privacy plugin wraps module and optimizer, so the
    weights go into the plain module and the term onto the plain optimizer.
    """

    def __init__(self) -> None:
        self.active = False
        self.global_file: tuple[Storage, str] | None = None
        self.init_seed = 0
        self.mu = 0.0
        self.run: Any = None
        self.module: Any = None

    @hookimpl(tryfirst=True)
    def wrap_training(self, run: Any, objects: Any) -> None:
        if not self.active:
            return
        import torch

        from ..train.checkpoint import read_weights

        self.run, self.module = run, objects.module
        model = run.components.model
        if self.global_file is not None:
            storage, name = self.global_file
            read_weights(storage.path(name), objects.module, model, storage=storage)
        else:  # round 1: every client starts from the same weights, seeded by the federation
            torch.manual_seed(self.init_seed)
            fresh = model.build().to(run.device)
            objects.module.load_state_dict(fresh.state_dict())
        if self.mu > 0:
            add_proximal_term(objects.optimizer, list(objects.module.parameters()), self.mu)


class Client:
    """What one client process does for the coordinator: train, evaluate, finalize."""

    def __init__(self, run_dir: Path, name: str, host: Any = None) -> None:
        from ..crypto import check_key
        from ..plugins import load_plugins

        self.run_dir = Path(run_dir)
        self.fed: LoadedFederation = load_stored_federation(Storage(self.run_dir))
        self.spec: ClientSpec = next(c for c in self.fed.config.clients if c.name == name)
        self.host = host if host is not None else load_plugins()
        self.hooks = ClientHooks()
        self.host.register_plugin(self.hooks, f"federate-client-{name}", origin="federate")
        self.storage = Storage(self.run_dir, cipher=federation_cipher(self.fed, self.host))
        check_key(self.storage, create=False)
        self.home = self.storage.sub(exchange.client_dir(name))

    # -- train -----------------------------------------------------------------------------------

    def train(self, r: int) -> dict[str, Any]:
        """Train round ``r`` from round ``r-1``'s global weights; write the update."""
        from ..train.engine import run_from_config

        cfg = self.fed.config
        rnd = self.storage.sub(exchange.round_dir(r))
        prev = self.storage.sub(exchange.round_dir(r - 1))
        hooks = self.hooks
        hooks.global_file = (prev, exchange.GLOBAL) if r > 1 else None
        hooks.init_seed, hooks.mu = cfg.seed, cfg.mu
        self.home.remove(exchange.round_dir(r))  # what a killed attempt left
        self.home.makedirs()
        hooks.active = True
        old = os.environ.get("PRIVET_RUN_DIR")
        os.environ["PRIVET_RUN_DIR"] = str(self.home.path(exchange.round_dir(r)))
        try:
            overrides = local_overrides(self.fed.config, self.spec)
            _run_dir, report = run_from_config(self.fed.pipeline_path(self.spec), host=self.host,
                                               overrides=overrides, progress="none")
        finally:
            hooks.active = False
            _restore_env("PRIVET_RUN_DIR", old)
        from ..train.checkpoint import write_weights

        examples = len(hooks.run.prepared.tables["train"])
        updates = rnd.sub("updates")
        write_weights(updates.path(f"{self.spec.name}.safetensors"), hooks.module,
                      hooks.run.components.model, storage=updates)
        info = {"client": self.spec.name, "round": r, "examples": examples,
                "local": {k: v for k, v in (report.get("final") or {}).items()
                          if isinstance(v, (int, float))}}
        if isinstance(report.get("privacy"), dict):  # a private client: its round's epsilon
            info["privacy"] = report["privacy"]
        rnd.write_json(exchange.update_info(self.spec.name), info)  # last: the update is complete
        return info

    # -- evaluate ----------------------------------------------------------------------------------

    def evaluate(self, r: int) -> dict[str, Any]:
        """Metrics of round ``r``'s global weights on this client's validation split."""
        run = self.hooks.run
        if run is None:
            raise RuntimeError("evaluate before train: this client has no prepared data yet")
        rnd = self.storage.sub(exchange.round_dir(r))
        n, metrics = validate(run, rnd, exchange.GLOBAL)
        return {"client": self.spec.name, "round": r, "examples": n, "metrics": metrics}

    # -- finalize ----------------------------------------------------------------------------------

    def finalize(self, best: int, last: int) -> dict[str, Any]:
        """``clients/C/final``: this client's last run folder with round ``best``'s global
        weights as its ``best/`` weights, so ``privet export`` exports the global model with
        this client's own fitted cleaners."""
        src = Storage(self.home.path(exchange.round_dir(last)), cipher=self._own_cipher())
        if not src.exists("config.yaml"):
            raise RuntimeError(f"{src.root}: no run folder for round {last}")
        dst = Storage(self.home.path("final"), cipher=src.cipher)
        self.home.remove("final")
        for name in ("config.yaml", "manifest.json", "state/components.json", "key-check"):
            if src.exists(name):
                dst.write_bytes(name, src.read_bytes(name))
        if src.path("cache").is_symlink():
            dst.symlink("cache", src.path("cache").resolve())
        rnd = self.storage.sub(exchange.round_dir(best))
        dst.write_bytes("best/model.safetensors", rnd.read_bytes(exchange.GLOBAL))
        dst.write_json("report.json", {"status": "completed", "federated": True,
                                       "global_round": best, "client": self.spec.name})
        return {"client": self.spec.name, "final": str(dst.root)}


    def _own_cipher(self) -> Any:
        """The cipher of this client's run folders: its pipeline's key, not the federation's."""
        from ..crypto import cipher_for
        from ..pipeline import prepare_config

        host, loaded = prepare_config(self.fed.pipeline_path(self.spec), host=self.host,
                                      overrides=list(self.spec.overrides))
        return cipher_for(loaded.config, host.catalog, loaded.base_dir)


def local_overrides(cfg: Any, spec: ClientSpec) -> list[str]:
    """The client's own overrides, then what the federation decides: the local training
    of a round (epochs, or optimizer steps) and no per-round export (``final/`` is exported)."""
    local = ([f"train.max_steps={cfg.local_steps}", f"train.epochs={cfg.local_steps}"]
             if cfg.local_steps else [f"train.epochs={cfg.local_epochs}", "train.max_steps=0"])
    return [*spec.overrides, *local, "export.formats=[]"]


def federation_cipher(fed: LoadedFederation, host: Any) -> Any:
    """The cipher of the federation's own files (global weights, updates), or None."""
    from ..crypto import Cipher, load_key

    enc = fed.config.security.encryption
    if enc is None:
        return None
    return Cipher(load_key(enc.key, host.catalog, fed.base_dir,
                           where=f"{fed.file}: security.encryption.key"))


def validate(run: Any, storage: Storage, name: str) -> tuple[int, dict[str, Any]]:
    """The items counted and the metrics of weights file ``name`` (in ``storage``) on the
    run's validation split: a fresh module of the run's model, evaluated as the engine does."""
    import torch

    from ..data.loader import make_loader
    from ..train.checkpoint import read_weights

    model, cfg = run.components.model, run.config
    torch.manual_seed(cfg.seed)
    module = model.build().to(run.device)
    read_weights(storage.path(name), module, model, storage=storage)
    loader = make_loader(run.prepared.tables["val"], model, [], seed=cfg.seed, train=False,
                         batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                         shuffle=False, num_workers=0)
    acc, n = model.metrics("val"), 0
    module.eval()
    with torch.no_grad():
        for loaded in loader:
            if loaded.batch is None:
                continue
            out = model.step(module, _to_device(loaded.batch, run.device))
            acc.update(out)
            n += int(out.count)
    return n, acc.compute() if n else {}


def _to_device(batch: Any, device: Any) -> Any:
    import torch

    if device is None or device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _restore_env(key: str, old: str | None) -> None:
    if old is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = old


def _watch_parent() -> None:
    """Leave when the coordinator is gone (killed): an orphan must not keep training."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="privet-federate-watch").start()


def serve(client: Client, commands: TextIO, replies: TextIO) -> None:
    """Answer the coordinator's commands, one JSON line each, until stdin closes."""
    ops = {"train": lambda c: client.train(c["round"]),
           "evaluate": lambda c: client.evaluate(c["round"]),
           "finalize": lambda c: client.finalize(c["best"], c["last"])}
    for line in commands:
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            result = {"ok": True, **ops[command["op"]](command)}
        except Exception as err:  # noqa: BLE001 - sent to the coordinator, which reports it
            if os.environ.get("PRIVET_DEBUG") == "1":
                import traceback

                traceback.print_exc()
            result = {"ok": False, "error": str(err).replace("\n", " "),
                      "type": type(err).__name__}
        replies.write(json.dumps(result, default=float) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> None:
    """``python -m privet.federate.client RUN_DIR CLIENT``."""
    args = sys.argv[1:] if argv is None else argv
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints must not corrupt the replies
    _watch_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    from ..storage import owner_only

    try:
        with owner_only():
            client = Client(Path(args[0]), args[1])
            replies.write(json.dumps({"ok": True, "ready": args[1]}) + "\n")
            replies.flush()
            serve(client, sys.stdin, replies)
    except Exception as err:  # noqa: BLE001 - start-up failure, reported the same way
        replies.write(json.dumps({"ok": False, "error": str(err).replace("\n", " "),
                                  "type": type(err).__name__}) + "\n")
        replies.flush()
    replies.close()
    sys.stdout.flush()
    os._exit(0)  # no teardown of torch: every file was fsynced by the storage module


if __name__ == "__main__":
    main()
