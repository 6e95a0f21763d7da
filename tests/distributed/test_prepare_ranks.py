"""Under torchrun, the prepared cache is the one a single process with one worker makes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml



def _torchrun_helpers():
    """The torchrun tests' helpers (tests are imported by path: --import-mode=importlib)."""
    name = "privet_dist_tests_torchrun"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_torchrun.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_helpers = _torchrun_helpers()
TESTS, env_for, standalone = _helpers.TESTS, _helpers.env_for, _helpers.standalone

pytestmark = pytest.mark.slow


def _data(folder: Path) -> Path:
    folder.mkdir()
    n = 0
    for f in range(4):
        lines = []
        for _ in range(50):
            n += 1
            lines.append(json.dumps({"x": [((n * 7 + k) % 13) / 3.0 for k in range(8)], "label": n % 3})
                         if n % 31 else "{broken")
        (folder / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _pipeline(tmp: Path, data: Path) -> Path:
    config = {
        "name": "prep", "seed": 5, "runs_dir": str(tmp / "runs"),
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "jsonl", "options": {"paths": [str(data)]}},
                 "cleaners": ["tiny.scale"], "prepare_workers": 2, "shard_rows": 40,
                 "max_bad_fraction": 0.2},
        "model": {"name": "tiny.mlp"},
        "train": {"epochs": 1, "batch_size": 16, "progress": "none"},
    }
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cache(run_dir: Path) -> tuple[dict[str, bytes], dict]:
    cache = (run_dir / "cache").resolve()
    meta = json.loads((cache / "meta.json").read_text())
    files = {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*.arrow"))}
    return files, {k: v for k, v in meta.items() if k not in ("created", "seconds", "workers", "timings")}


def test_two_ranks_with_worker_processes_prepare_the_cache_of_one_process(tmp_path):
    data = _data(tmp_path / "data")
    pipeline = _pipeline(tmp_path, data)
    standalone(tmp_path, 2, pipeline, "--name", "ranks")
    subprocess.run([sys.executable, "-m", "privet", "run", str(pipeline), "--name", "single",
                    "-s", "data.prepare_workers=1", "-s", f"runs_dir={tmp_path / 'runs-single'}"],
                   env=env_for(tmp_path), check=True, capture_output=True, timeout=240)

    ranks_files, ranks_meta = _cache(tmp_path / "runs" / "ranks")
    single_files, single_meta = _cache(tmp_path / "runs-single" / "single")
    assert json.loads(((tmp_path / "runs" / "ranks" / "cache").resolve() / "meta.json").read_text())["workers"] == 2
    assert len(ranks_files) >= 3 and ranks_files == single_files
    assert ranks_meta == single_meta and ranks_meta["dropped"] == {"malformed_json": 6}
