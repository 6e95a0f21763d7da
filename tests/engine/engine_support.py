"""Helpers shared by the engine tests (imported by the conftest and the test modules).

The test plugins are loaded by file path under private module names, so the same
objects are used whether a test imports them from here or the host registers them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
KIT_DIR = Path(__file__).resolve().parent / "plugins"


def _load(path: Path, name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


tinyplugin = _load(TESTS / "tinyplugin.py", "privet_engine_tests_tinyplugin")
kit = _load(KIT_DIR / "kit.py", "privet_engine_tests_kit")


def blobs_pipeline(**train: Any) -> dict[str, Any]:
    """A small classification pipeline on CPU (240 records, 6 features), silent progress."""
    return {
        "name": "blobs",
        "seed": 7,
        "data": {"source": {"name": "tiny.blobs", "options": {"n": 240, "features": 6}},
                 "cleaners": ["tiny.scale"]},
        "model": {"name": "tiny.mlp", "options": {"hidden": 16}},
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "progress": "none",
                  "log_every_n_steps": 5, **train},
    }


def launcher() -> list[str]:
    """The installed ``privet`` script next to this interpreter (``python -m privet`` if none)."""
    script = Path(sys.executable).with_name("privet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "privet"]


def read_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if (p / "state.json").exists())


def latest_checkpoint(run_dir: Path) -> Path:
    found = checkpoints(run_dir)
    assert found, f"no checkpoint in {run_dir}"
    return found[-1]


def read_state(checkpoint: Path) -> dict[str, Any]:
    import torch

    return torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """``torch.equal`` on every tensor of two nested structures (dicts, lists, tensors, scalars)."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def prepared_table(report: dict[str, Any], split: str = "train") -> Any:
    """The prepared examples of ``split``, read back from the run's cache like the engine does."""
    import json

    from privet.data.arrow import ArrowTable

    cache = Path(report["data"]["cache"])
    meta = json.loads((cache / "meta.json").read_text())
    return ArrowTable([str(cache / f) for f in meta["example_files"][split]])


def fitted_mlp(run_dir: Path, **options: Any) -> Any:
    """``tiny.mlp`` with the state the run fitted (features, classes)."""
    import json

    model = tinyplugin.MLP(tinyplugin.MLP.Options(**options))
    state = json.loads((Path(run_dir) / "state/components.json").read_text())["model"]["state"]
    model.load_state_dict(state)
    return model


def probe_pipeline(**train: Any) -> dict[str, Any]:
    """``blobs_pipeline`` with the fault-injecting ``kit.probe`` model (options via ``model``)."""
    model = train.pop("model", {})
    config = blobs_pipeline(**train)
    config["model"] = {"name": "kit.probe", "options": model}
    return config


def write_blobs_jsonl(path: Path, n: int, *, bad: dict[int, str] | None = None, seed: int = 0) -> Path:
    """``n`` records ``{"x": [4 floats], "label": 0..2}`` as JSON lines; ``bad`` maps line -> raw text.

    Bad lines are inserted at exactly those (1-based) line numbers.
    """
    import json
    import random

    rng = random.Random(seed)
    bad = dict(bad or {})
    lines: list[str] = []
    good = 0
    while good < n:
        if len(lines) + 1 in bad:
            lines.append(bad.pop(len(lines) + 1))
            continue
        label = rng.randrange(3)
        x = [label * 2.0 + rng.gauss(0, 0.3) for _ in range(4)]
        lines.append(json.dumps({"x": x, "label": label}))
        good += 1
    lines.extend(bad[k] for k in sorted(bad))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jsonl_pipeline(path: Path, **data: Any) -> dict[str, Any]:
    """``tiny.mlp`` trained on a JSON Lines file through the core's ``jsonl`` source."""
    return {
        "name": "jsonl",
        "seed": 5,
        "data": {"source": {"name": "jsonl", "options": {"paths": [str(path)]}}, **data},
        "model": {"name": "tiny.mlp", "options": {"hidden": 8}},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "progress": "none"},
    }
