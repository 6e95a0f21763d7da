"""The coordinator: rounds of local training and aggregation, committed one at a time.

Each round: every client process trains from the last global weights and writes its
update (weights, then its example count), the coordinator averages them into the round's
global weights, every client evaluates those on its validation split, the round's report
is written, and last the commit marker (``committed.json``, with the global weights'
sha256). A round without its marker did not happen: resume (``--resume RUN``) deletes it
and runs it again from the previous round's global weights, which gives the same final
weights as a run that was never stopped, because client runs and the average are
deterministic functions of their inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..runs import RunLock, create_run_folder
from ..storage import Storage
from . import exchange
from .aggregate import FederationError, client_weights, fedavg
from .config import LoadedFederation, load_federation, load_stored_federation


class Workers:
    """The client processes: one per client, commands and replies as JSON lines."""

    def __init__(self, run_dir: Path, names: list[str]) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        for name in names:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "privet.federate.client", str(run_dir), name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        for name in names:
            self._reply(name)  # started: plugins loaded, key checked

    def ask_all(self, command: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Send ``command`` to every client at once (they work in parallel); their replies."""
        for name, proc in self.procs.items():
            try:
                proc.stdin.write(json.dumps(command) + "\n")
                proc.stdin.flush()
            except OSError:
                self._reply(name)  # it died: report how
        return {name: self._reply(name) for name in self.procs}

    def _reply(self, name: str) -> dict[str, Any]:
        proc = self.procs[name]
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            raise FederationError(f"client {name!r} stopped (exit code {code}); its messages "
                                  f"are above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise FederationError(f"client {name!r}: {reply.get('error')}")
        return reply

    def close(self, *, kill: bool = False) -> None:
        """Let the clients leave (stdin closed), or kill them: after a failure the round is
        redone from its start anyway, so what they were doing is not worth waiting for."""
        for proc in self.procs.values():
            if kill:
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Coordinator:
    """One federation run: its folder, its client processes and its rounds."""

    def __init__(self, fed: LoadedFederation, run_dir: Path, host: Any) -> None:
        from .client import federation_cipher

        self.fed, self.cfg, self.run_dir, self.host = fed, fed.config, Path(run_dir), host
        self.storage = Storage(self.run_dir, cipher=federation_cipher(fed, host))
        self.history: list[dict[str, Any]] = []
        self.clients: dict[str, int] = {}
        #: per private client, (epsilon, delta) of each round, for the composed bound
        self.spent: dict[str, list[tuple[float, float]]] = {}
        self.started = time.time()

    # -- the run folder --------------------------------------------------------------------------

    @classmethod
    def start(cls, file: str | Path, host: Any, name: str | None = None) -> "Coordinator":
        """A new federation run folder under ``runs_dir`` (``name`` or the file's name)."""
        fed = load_federation(file)
        check_pipelines(fed, host)
        run_dir = create_run_folder(fed.runs_root(), name or fed.config.name).resolve()
        storage = Storage(run_dir)
        storage.write_bytes("federation.yaml", fed.text)
        storage.write_json("manifest.json", {
            "kind": "federation", "federation_file": str(Path(file).resolve()),
            "base_dir": str(fed.base_dir), "federation_sha256": fed.digest(),
            "privet_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "clients": [c.name for c in fed.config.clients]})
        return cls(fed, run_dir, host)

    @classmethod
    def resume(cls, run_dir: str | Path, host: Any) -> "Coordinator":
        """The federation of an existing run folder, from its own copy of the file."""
        run_dir = Path(run_dir).resolve()
        storage = Storage(run_dir)
        if not storage.exists("federation.yaml") or not storage.exists("manifest.json"):
            raise FederationError(f"{run_dir} is not a federation run folder (no federation.yaml "
                                  f"or manifest.json); pass the folder 'privet federate' printed")
        fed = load_stored_federation(storage)
        check_pipelines(fed, host)
        return cls(fed, run_dir, host)

    # -- rounds ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the rounds not yet committed, then write ``final`` folders and the report."""
        from ..crypto import check_key
        from ..monitor.tensorboard import Scalars
        from ..storage import owner_only

        lock = RunLock(self.run_dir).acquire()
        workers = None
        ok = checked = False
        try:
            with owner_only():
                check_key(self.storage, create=True)  # a wrong key stops here, nothing written
                done = self.committed_rounds()
                checked = True  # from here on, a failure is this attempt's to report
                self.scalars = Scalars(self.storage.path("tensorboard"),
                                       purge_step=done + 1 if done else None)
                workers = Workers(self.run_dir, [c.name for c in self.cfg.clients])
                for r in range(done + 1, self.cfg.rounds + 1):
                    self.round(r, workers)
                report = self.finish(workers)
            ok = True
            return report
        except BaseException as err:
            if checked:  # a wrong key or a tampered round leaves the last report as it was
                self._write_report("failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            if workers is not None:
                workers.close(kill=not ok)
            if getattr(self, "scalars", None) is not None:
                self.scalars.close()
            lock.release()

    def committed_rounds(self) -> int:
        """The last round committed in order (checked against its marker); later, partial
        rounds are deleted. Also reloads the history of the committed rounds."""
        done = 0
        while done < self.cfg.rounds and self.storage.exists(
                f"{exchange.round_dir(done + 1)}/{exchange.MARKER}"):
            done += 1
            rnd = self.storage.sub(exchange.round_dir(done))
            marker = rnd.read_json_object(exchange.MARKER, what="round marker")
            if marker.get("global_sha256") != exchange.digest(rnd, exchange.GLOBAL):
                raise FederationError(f"{rnd.path(exchange.GLOBAL)} does not match its round's "
                                      f"commit marker (changed after the round ended); the run "
                                      f"cannot be resumed from it")
            report = rnd.read_json_object("report.json", what="round report")
            self.history.append({"round": done, **report["global"]})
            self.clients = {k: v["examples"] for k, v in report["clients"].items()}
            self._record_privacy(report["clients"])
        for name in self.storage.listdir():
            if name.startswith("round-") and name[6:].isdigit() and int(name[6:]) > done:
                self.storage.remove(name)
        return done

    def round(self, r: int, workers: Workers) -> None:
        """One round: train everywhere, aggregate, evaluate everywhere, commit."""
        rnd = self.storage.sub(exchange.round_dir(r))
        rnd.makedirs("updates")
        infos = workers.ask_all({"op": "train", "round": r})
        names = [c.name for c in self.cfg.clients]
        counts = [int(infos[n]["examples"]) for n in names]
        updates = [(n, exchange.load_tensors(rnd, exchange.update_name(n))) for n in names]
        exchange.save_tensors(rnd, exchange.GLOBAL, fedavg(updates, counts))
        evals = workers.ask_all({"op": "evaluate", "round": r})
        report = round_report(r, infos, evals, names, counts)
        self._record_privacy(report["clients"])
        rnd.write_json("report.json", report)
        self.scalars.log({f"global/{k}": v for k, v in report["global"].items()}, r)
        self.scalars.flush()
        marker = {"round": r, "global_sha256": exchange.digest(rnd, exchange.GLOBAL),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        rnd.write_json(exchange.MARKER, marker)  # last: the round is committed
        self.history.append({"round": r, **report["global"]})
        self.clients = dict(zip(names, counts))
        self._write_report("running")
        print(f"privet federate: round {r}/{self.cfg.rounds} " + " ".join(
            f"{k}={v:.4g}" for k, v in report["global"].items()), file=sys.stderr)

    def _record_privacy(self, clients: dict[str, Any]) -> None:
        for name, c in clients.items():
            p = c.get("privacy")
            if isinstance(p, dict) and isinstance(p.get("epsilon"), (int, float)):
                self.spent.setdefault(name, []).append((float(p["epsilon"]), float(p["delta"])))

    def finish(self, workers: Workers) -> dict[str, Any]:
        best = best_round(self.history, self.cfg.best.monitor, self.cfg.best.mode)
        finals = workers.ask_all({"op": "finalize", "best": best, "last": self.cfg.rounds})
        return self._write_report("completed", best_round=best,
                                  final_dirs={n: f["final"] for n, f in finals.items()})

    def _write_report(self, status: str, **extra: Any) -> dict[str, Any]:
        report = {"status": status, "kind": "federation", "rounds": self.cfg.rounds,
                  "rounds_done": len(self.history), "aggregation": self.cfg.aggregation,
                  "mu": self.cfg.mu, "clients": dict(self.clients), "history": self.history,
                  "final": {k: v for k, v in (self.history[-1] if self.history else {}).items()
                            if k != "round"},
                  "elapsed_s": round(time.time() - self.started, 3), **extra}
        if self.spent:
            report["privacy"] = compose_privacy(self.spent)
        if "best_round" in extra:
            report["best"] = next(h for h in self.history if h["round"] == extra["best_round"])
        self.storage.write_json("report.json", report)
        return report


def round_report(r: int, infos: dict[str, Any], evals: dict[str, Any], names: list[str],
                 counts: list[int]) -> dict[str, Any]:
    """Per-client numbers and the global model's metrics, weighted by validation examples."""
    shares = client_weights(counts)
    clients = {n: {"examples": c, "weight": s, "local": infos[n].get("local", {}),
                   "val_examples": evals[n]["examples"], "val": evals[n]["metrics"]}
               for n, c, s in zip(names, counts, shares)}
    for n in names:
        if "privacy" in infos[n]:
            clients[n]["privacy"] = infos[n]["privacy"]
    return {"round": r, "clients": clients, "global": weighted_metrics(
        [(evals[n]["metrics"], evals[n]["examples"]) for n in names])}


def best_round(history: list[dict[str, Any]], monitor: str, mode: str) -> int:
    """The round whose global metrics score best on ``monitor`` (the first of equals;
    the last round when no round reports it)."""
    scored = [h for h in history if isinstance(h.get(monitor), (int, float))]
    if not scored:
        return history[-1]["round"]
    pick = min if mode == "min" else max
    return pick(scored, key=lambda h: h[monitor])["round"]


def compose_privacy(spent: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Each private client's (epsilon, delta) over all rounds by basic composition: the
    sums of the rounds' values, an upper bound (every round trains on the same data)."""
    return {name: {"epsilon_per_round": [e for e, _ in rounds],
                   "epsilon": sum(e for e, _ in rounds), "delta": sum(d for _, d in rounds),
                   "composition": "basic (sum over rounds; an upper bound)"}
            for name, rounds in spent.items()}


def weighted_metrics(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Each metric averaged over the clients that report it, weighted by their examples."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for metrics, n in parts:
        for key, value in metrics.items():
            if n > 0 and isinstance(value, (int, float)):
                totals[key] = totals.get(key, 0.0) + float(value) * n
                weights[key] = weights.get(key, 0) + n
    return {k: totals[k] / weights[k] for k in sorted(totals)}


def check_pipelines(fed: LoadedFederation, host: Any) -> None:
    """Validate every client's pipeline before any process starts (file and line on error)."""
    from ..pipeline import prepare_config

    for client in fed.config.clients:
        prepare_config(fed.pipeline_path(client), host=host, overrides=list(client.overrides))

