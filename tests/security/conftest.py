"""Fixtures of the security suite: the engine suite's launcher and test plugins, reused.

Each test here is an attack: a small payload builder, the real command or engine, and
assertions that the payload's marker was never written and the refusal names the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
sys.path.insert(0, str(ENGINE))  # engine_support: pipelines, launcher, tiny plugins

from engine_support import kit, tinyplugin  # noqa: E402
from privet.testing import privet_host, run_pipeline  # noqa: E402,F401

import pytest  # noqa: E402


@pytest.fixture
def host(privet_host):
    """``privet_host`` with the tiny plugin (tiny.blobs, tiny.scale, tiny.mlp) and the kit."""
    privet_host.register_plugin(tinyplugin, "tinyplugin")
    privet_host.register_plugin(kit, "kit")
    return privet_host


@pytest.fixture
def run(host, run_pipeline):
    return run_pipeline


@pytest.fixture
def privet_cli(tmp_path):
    """The real launcher, no installed plugins, no PRIVET_* variables of the caller."""
    import os
    import subprocess

    from engine_support import launcher

    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    base["PRIVET_LOAD_PLUGINS"] = ""

    def call(*args: str, env: dict | None = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*launcher(), *args], env={**base, **(env or {})}, cwd=cwd or tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    return call
