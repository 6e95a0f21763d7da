"""Seconds from a run's last printed line to the exit of the `privet run` process.

Runs the real console script on a small generated pipeline (tests/tinyplugin.py: 600
records, 34 optimizer steps) several times and reports the median; with ``--export`` the
run also exports ONNX. The comparison is a plain `python -c "import torch"` process, whose
interpreter teardown is what `privet` now skips (see `privet.cli.entry`).

    python benchmarks/bench_exit.py [--rounds 5] [--export]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def last_line_to_exit(folder: Path, export: bool) -> float:
    config = {"name": "lat", "seed": 1, "runs_dir": "runs", "plugins": {"paths": [str(ROOT / "tests")]},
              "data": {"source": {"name": "tiny.blobs", "options": {"n": 600, "features": 6}},
                       "cleaners": ["tiny.scale"]},
              "model": {"name": "tiny.mlp", "options": {"hidden": 16}},
              "train": {"epochs": 2, "batch_size": 32, "device": "cpu", "progress": "log"}}
    if export:
        config["export"] = {"formats": ["onnx"]}
    (folder / "p.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PRIVET_LOAD_PLUGINS="", OMP_NUM_THREADS="1")
    script = Path(sys.executable).with_name("privet")
    proc = subprocess.Popen([str(script), "run", "p.yaml"], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    last = time.perf_counter()
    assert proc.stdout is not None
    for _line in proc.stdout:
        last = time.perf_counter()
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"privet run failed with exit code {proc.returncode}")
    return time.perf_counter() - last


def torch_teardown() -> float:
    """Exit time of a process that only imported torch (measured from its last atexit)."""
    marker = Path(tempfile.mkdtemp()) / "t"
    code = ("import atexit, time, torch\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write(repr(time.time())))")
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.time() - float(marker.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(last_line_to_exit(Path(tmp), args.export))
    teardown = [torch_teardown() for _ in range(args.rounds)]
    print(f"privet run, last line -> exit: median {statistics.median(runs):.3f} s "
          f"(min {min(runs):.3f}, max {max(runs):.3f}, {args.rounds} rounds, export={args.export})")
    print(f"python -c 'import torch' teardown: median {statistics.median(teardown):.3f} s")


if __name__ == "__main__":
    main()
