"""Fixtures of the engine suite: a host with the test plugins and the real launcher.

In-process tests register ``tests/tinyplugin.py`` and ``tests/engine/plugins/kit.py`` on
``privet.testing``'s host; subprocess tests load the same files through ``plugins.paths``
with every installed plugin switched off (``PRIVET_LOAD_PLUGINS=``), so a plugin being
developed next door cannot break the engine's tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for engine_support

from engine_support import kit, launcher, tinyplugin  # noqa: E402

# The fixtures plugin authors get from privet.testing, reused here.
from privet.testing import privet_host, run_pipeline  # noqa: E402,F401


@pytest.fixture
def host(privet_host):
    """``privet_host`` with the tiny plugin (tiny.blobs, tiny.scale, tiny.mlp) and the kit."""
    privet_host.register_plugin(tinyplugin, "tinyplugin")
    privet_host.register_plugin(kit, "kit")
    return privet_host


@pytest.fixture
def privet_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run the real launcher with no installed plugins and no PRIVET_* variables of the caller."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    base["PRIVET_LOAD_PLUGINS"] = ""
    base["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")

    def run(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*launcher(), *args], env={**base, **(env or {})}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def run(host, run_pipeline):
    """``run_pipeline`` on a host that has the test plugins: ``run(config).assert_success()``."""
    return run_pipeline
