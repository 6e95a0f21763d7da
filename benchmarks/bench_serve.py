"""``privet serve`` under load on loopback: requests/s and latency percentiles.

Every configuration serves the same bundle (the tests' tiny MLP, exported to ONNX) in its
own process; one load process drives ``--clients`` concurrent keep-alive clients, each
sending one-record requests back to back. All servers run at once; ``--seconds`` of load
per configuration are split into ``--rounds`` interleaved rounds (after a warm-up):

* ``bare``: FastAPI + ONNX Runtime with the same preprocessing (the bundle's Predictor),
  no auth, no limits, no audit, no batching: the floor any gateway starts from;
* ``bare, serving ORT options``: the same with the ONNX Runtime session options ``privet
  serve`` uses (one intra-op thread, no spinning), to show what they alone are worth;
* ``privet``: ``privet serve`` with JWT auth (HS256), a roles file, rate limits on and the
  audit log with ``fsync=always``, micro-batching off (``--max-batch 1``);
* ``privet, fsync interval``: the same, the audit log synced every 100 lines or 1 s;
* ``privet batched``: the same with micro-batching (``--max-batch 32 --max-wait-ms 2``);
* ``privet batched, fsync interval``: the same, the audit log synced every 100 lines or 1 s.

Then the ceiling: ``privet predict``'s code (``predict_path``) on the same records as one
batch job, records/s. The server's own CPU time per request is reported too: on a shared
machine it is steadier than requests/s.

    python benchmarks/bench_serve.py                                # print the table
    python benchmarks/bench_serve.py --write docs/benchmarks-serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SECRET = "bench-secret-" + "0123456789abcdef" * 3
AUDIENCE = "privet-bench"


def make_bundle(folder: Path, features: int, hidden: int) -> Path:
    """The tests' MLP (``features`` inputs, ``hidden`` wide), one epoch, exported to ONNX."""
    from privet.testing import make_test_host
    from privet.train.engine import run_from_config

    host = make_test_host()
    host.load_path(TESTS)
    config = {"name": "tiny", "seed": 3, "runs_dir": str(folder / "runs"),
              "plugins": {"paths": [str(TESTS)]},
              "data": {"source": {"name": "tiny.blobs", "options": {"n": 200, "features": features}},
                       "cleaners": ["tiny.scale"], "split": {"val": 0.2}},
              "model": {"name": "tiny.mlp", "options": {"hidden": hidden}},
              "train": {"epochs": 1, "batch_size": 32, "progress": "none", "device": "cpu"},
              "export": {"formats": ["onnx"]}}
    run_dir, _ = run_from_config(config, host=host, base_dir=folder)
    return run_dir / "export"


def bench_records(features: int, n: int = 256) -> list[dict[str, Any]]:
    from privet.testing import make_test_host

    host = make_test_host()
    host.load_path(TESTS)
    source = host.make("source", "tiny.blobs", {"n": n, "features": features, "seed": 11})
    return [r for s in source.shards() for r in source.read(s)]


def bare_server(port: int, bundle: str, tuned: bool = False) -> None:
    """FastAPI + ONNX Runtime, the bundle's own preprocessing, nothing else (``tuned``: with
    the session options of ``privet serve``)."""
    import uvicorn
    from fastapi import Body, FastAPI

    from privet.export.predict import Predictor
    from privet.testing import make_test_host

    host = make_test_host()
    host.load_path(TESTS)
    predictor = Predictor.open(bundle, host)
    if tuned:
        from privet.serve.models import ServedModel

        ServedModel("tiny", Path(bundle), predictor, "").tune_for_serving(intra_op_threads=1)
    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, body: dict = Body(...)) -> dict:
        located = ((f"record {i}", r) for i, r in enumerate(body["records"]))
        return {"model": name, "predictions": list(predictor.predict(located))}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def token() -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": "bench", "roles": ["analyst"], "aud": AUDIENCE, "iat": now,
                       "exp": now + 3600}, SECRET, algorithm="HS256")


def start(kind: str, bundle: Path, port: int, work: Path) -> subprocess.Popen:
    """The server of configuration ``kind`` in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if kind.startswith("bare"):
        cmd = [sys.executable, __file__, "--bare-server", str(port), str(bundle),
               *(["--tuned"] if "ORT" in kind else [])]
    else:
        from privet.crypto import new_key_text

        roles = work / "roles.yaml"
        roles.write_text("roles:\n  analyst: {models: [tiny], actions: [predict]}\n")
        env.update(PRIVET_JWT_SECRET=SECRET, PRIVET_AUDIT_KEY=new_key_text())
        batch = ["--max-batch", "32", "--max-wait-ms", "2"] if "batched" in kind else ["--max-batch", "1"]
        fsync = "interval" if "interval" in kind else "always"
        cmd = [sys.executable, "-m", "privet", "--plugin-dir", str(TESTS), "serve", str(bundle),
               "--port", str(port), "--roles-file", str(roles), "--jwt-audience", AUDIENCE,
               "--rate-limit", "100000/second", "--max-concurrent", "256",
               "--audit-log", str(work / f"audit-{port}.jsonl"), "--audit-fsync", fsync,
               "--log-level", "warning", *batch]
    return subprocess.Popen(cmd, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    from privet.testing import wait_for_server

    wait_for_server(url, proc, timeout)


async def load(url: str, records: list[dict], clients: int, seconds: float,
               headers: dict[str, str]) -> tuple[list[float], int]:
    """``clients`` workers posting one record each, back to back, for ``seconds``."""
    import httpx

    bodies = [json.dumps({"records": [r]}).encode() for r in records]
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={**headers, "content-type": "application/json"}) as client:
        deadline = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                begun = time.perf_counter()
                try:
                    response = await client.post("/v1/models/tiny:predict", content=bodies[i % len(bodies)])
                except httpx.TransportError:  # counted, not fatal: one dropped connection
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - begun)
                else:
                    errors += 1
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
    return latencies, errors


def measure(kinds: list[str], bundle: Path, records: list[dict], args: argparse.Namespace,
            work: Path) -> list[dict[str, Any]]:
    """All servers up at once (idle ones cost nothing), then ``--rounds`` interleaved rounds
    of load on each in turn, so that the neighbours' load hits every configuration alike."""
    from privet.serve.server import free_port

    servers = {}
    try:
        for kind in kinds:
            port = free_port()
            servers[kind] = (f"http://127.0.0.1:{port}", start(kind, bundle, port, work))
        auth = {"Authorization": f"Bearer {token()}"}
        results: dict[str, dict[str, Any]] = {k: {"rps": [], "latencies": [], "errors": 0, "cpu": 0.0}
                                              for k in kinds}
        for kind, (url, proc) in servers.items():
            wait_ready(url, proc)
            asyncio.run(load(url, records, args.clients, args.warmup, {} if kind.startswith("bare") else auth))
        slice_s = args.seconds / args.rounds
        for _ in range(args.rounds):
            for kind, (url, proc) in servers.items():
                cpu = cpu_seconds(proc.pid)
                latencies, errors = asyncio.run(load(url, records, args.clients, slice_s,
                                                     {} if kind.startswith("bare") else auth))
                r = results[kind]
                r["cpu"] += cpu_seconds(proc.pid) - cpu
                r["rps"].append(len(latencies) / slice_s)
                r["latencies"] += latencies
                r["errors"] += errors
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in servers.values():
            proc.wait(timeout=60)
    return [summary(kind, r) for kind, r in results.items()]


def summary(kind: str, r: dict[str, Any]) -> dict[str, Any]:
    latencies = sorted(r["latencies"])
    return {"kind": kind, "rps": statistics.median(r["rps"]), "errors": r["errors"],
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "cpu_ms": 1000 * r["cpu"] / max(1, len(latencies) + r["errors"])}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``): the server's own cost
    per request, which other load on a shared machine does not inflate as it does latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predict_ceiling(bundle: Path, records: list[dict], work: Path, repeat: int = 40) -> float:
    """Records/s of ``privet predict``'s code path on the same records as one batch job."""
    from privet.export.predict import predict_path
    from privet.testing import make_test_host

    host = make_test_host()
    host.load_path(TESTS)
    path = work / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records * repeat))
    begun = time.perf_counter()
    summary = predict_path(bundle, path, io.StringIO(), host=host)
    return summary.predicted / (time.perf_counter() - begun)


def table(rows: list[dict[str, Any]], ceiling: float, args: argparse.Namespace) -> str:
    bare = next(r["rps"] for r in rows if r["kind"] == "bare")
    lines = [f"MLP {args.features} -> {args.hidden} -> {args.hidden} -> 3 (ONNX Runtime); "
             f"{args.clients} clients, one record per request, {args.seconds:.0f} s per configuration "
             f"in {args.rounds} interleaved rounds (requests/s: their median), after "
             f"{args.warmup:.0f} s of warm-up.", "",
             "| configuration | requests/s | vs bare | p50 ms | p99 ms | server CPU ms/request | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['rps']:.0f} | {r['rps'] / bare:.2f}x | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['cpu_ms']:.2f} | {r['errors']} |")
    lines += ["", f"`privet predict` on the same records as one batch job: {ceiling:.0f} records/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4, help="Interleaved rounds; requests/s is their median.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--features", type=int, default=256, help="Inputs per record.")
    parser.add_argument("--hidden", type=int, default=1024, help="Width of the MLP's layers.")
    parser.add_argument("--write", type=Path, default=None, help="Update this docs page's results.")
    parser.add_argument("--bare-server", nargs=2, metavar=("PORT", "BUNDLE"), help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(int(args.bare_server[0]), args.bare_server[1], args.tuned)
        return
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = make_bundle(work, args.features, args.hidden)
        records = bench_records(args.features)
        kinds = ["bare", "bare, serving ORT options", "privet", "privet, fsync interval",
                 "privet batched", "privet batched, fsync interval"]
        rows = measure(kinds, bundle, records, args, work)
        ceiling = predict_ceiling(bundle, records, work)
    from _common import machine, replace_results

    started = "" if load_at_start is None else f" ({load_at_start:.1f} at the start)"
    text = (table(rows, ceiling, args) + f"\nMachine: {machine(load=True)}{started}; "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}.\n")
    print(text)
    if args.write:
        replace_results(args.write, text, "<!-- bench_serve:begin -->", "<!-- bench_serve:end -->")


if __name__ == "__main__":
    main()
