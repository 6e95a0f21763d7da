"""Start-up time of the launcher, against the imports it must not pay for.

Runs, interleaved, ``privet --help``, ``privet plugins`` (with whatever plugins are
installed), ``python -c "import click"`` and ``python -c "import torch"`` as fresh
processes, and reports the median wall time of each over ``--runs`` rounds (after one
warm-up round that fills the OS file cache and stevedore's entry-point cache).

Targets: ``privet --help`` within 1.5x of ``import click`` (the launcher is a click app:
click is the floor), and ``privet plugins`` under 1.2x ``import torch`` (listing plugins
must not cost a torch import; plugins must import torch lazily).

    python benchmarks/bench_startup.py                 # print the table
    python benchmarks/bench_startup.py --write docs/benchmarks-startup.md
    python benchmarks/bench_startup.py --check         # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, replace_results

TARGETS = {  # case -> (baseline, maximum ratio)
    "privet --help": ("import click", 1.5),
    "privet plugins": ("import torch", 1.2),
}


def launcher() -> list[str]:
    script = Path(sys.executable).with_name("privet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "privet"]


def cases() -> dict[str, list[str]]:
    return {
        "privet --help": [*launcher(), "--help"],
        "privet plugins": [*launcher(), "plugins"],
        "import click": [sys.executable, "-c", "import click"],
        "import torch": [sys.executable, "-c", "import torch"],
    }


def time_once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def measure(runs: int) -> dict[str, list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    todo = cases()
    for cmd in todo.values():  # warm-up round, not counted
        time_once(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in todo}
    for _ in range(runs):  # interleaved, so drift hits every case alike
        for name, cmd in todo.items():
            times[name].append(time_once(cmd, env))
    return times


def installed_plugins() -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    out = subprocess.run([*launcher(), "plugins", "--json"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return [f"{p['name']} ({p['distribution']} {p['version']})" for p in json.loads(out)
            if p["origin"] != "builtin" and p["status"] == "loaded"]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def versions() -> str:
    import torch

    import privet

    return (f"Python {platform.python_version()}, privet {privet.__version__}, "
            f"click {_version('click')}, torch {torch.__version__}")


def report(times: dict[str, list[float]], runs: int) -> tuple[str, bool]:
    """The markdown results section and whether every target is met."""
    med = {name: statistics.median(values) for name, values in times.items()}
    ok = True
    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Software: {versions()}",
        f"- Plugins installed: {', '.join(installed_plugins()) or 'none'}",
        f"- Method: median of {runs} interleaved runs after one warm-up round, wall time of a "
        f"fresh process (`benchmarks/bench_startup.py`)",
        "",
        "| Command | Median | Min | Max |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| `{name}` | {med[name] * 1000:.0f} ms | {min(values) * 1000:.0f} ms | "
                     f"{max(values) * 1000:.0f} ms |")
    lines += ["", "| Ratio | Value | Target | Met |", "|---|---|---|---|"]
    for name, (base, limit) in TARGETS.items():
        ratio = med[name] / med[base]
        met = ratio <= limit
        ok &= met
        lines.append(f"| `{name}` / `{base}` | {ratio:.2f}x | <= {limit}x | "
                     f"{'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n", ok


BEGIN = "<!-- results: written by benchmarks/bench_startup.py --write -->"
END = "<!-- end of results -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--write", type=Path, help="update the results section of this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    times = measure(args.runs)
    section, ok = report(times, args.runs)
    print(section)
    if args.write:
        replace_results(args.write, section, BEGIN, END)
        print(f"wrote {args.write}")
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
