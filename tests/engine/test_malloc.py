"""glibc malloc thresholds for CPU training (train/malloc.py), in fresh processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

CHECK = """
import sys
sys.path.insert(0, {tests!r})
from privet.train import malloc
from privet.train.engine import run_from_config
from engine_support import blobs_pipeline, kit, tinyplugin
from privet.plugins import PluginHost
before = malloc._tuned
host = PluginHost(strict=True)
host.load_builtins()
host.register_plugin(tinyplugin, "tinyplugin")
config = blobs_pipeline(epochs=1)
config["runs_dir"] = {runs!r}
run_from_config(config, host=host, base_dir={runs!r})
print(before, malloc._tuned, malloc.tune_for_training())
"""


def _run(tmp_path, **env: str) -> str:
    code = CHECK.format(tests=os.path.dirname(__file__), runs=str(tmp_path / "runs"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-3:]


def test_training_on_cpu_raises_the_malloc_thresholds_once(tmp_path):
    assert _run(tmp_path) == ["False", "True", "True"]


def test_privet_malloc_tuning_0_leaves_malloc_alone(tmp_path):
    assert _run(tmp_path, PRIVET_MALLOC_TUNING="0") == ["False", "False", "False"]
