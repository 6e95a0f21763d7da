"""Fixtures of the core tests: the real launcher in a subprocess, and fake installed plugins.

Fake distributions are written without pip: a ``NAME-0.1.dist-info`` folder with METADATA
and entry_points.txt next to the plugin module, in a folder put on the subprocess'
PYTHONPATH, where importlib.metadata finds them. stevedore caches entry points per
sys.path under $XDG_CACHE_HOME, so each test gets its own cache folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

# The fixtures plugin authors get from privet.testing, reused by the core's own tests.
from privet.testing import privet_host, run_pipeline  # noqa: F401

SAMPLE_PLUGINS = Path(__file__).parent / "sample_plugins"


def launcher() -> list[str]:
    """The installed ``privet`` script next to this interpreter (``python -m privet`` if none)."""
    script = Path(sys.executable).with_name("privet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "privet"]


class FakeSite:
    """A folder of fake installed distributions, each with one ``privet.plugins`` entry point."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, source: str, *, dist: str | None = None,
            version: str = "0.1") -> str:
        """Install plugin ``name`` whose module holds ``source``; returns the module name."""
        module = f"privet_fake_{name.replace('-', '_')}"
        dist = dist or f"privet-fake-{name}"
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(
            f"[privet.plugins]\n{name} = {module}\n", encoding="utf-8")
        (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return module


@pytest.fixture
def fake_site(tmp_path: Path) -> FakeSite:
    return FakeSite(tmp_path / "site")


@pytest.fixture
def sample_plugins() -> Path:
    """The folder holding ``tiny.py``, the tests' in-house plugin."""
    return SAMPLE_PLUGINS


Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def privet_cli(tmp_path: Path, fake_site: FakeSite) -> Run:
    """Run the real ``privet`` launcher: ``privet_cli("plugins", "--json", env={...})``.

    The environment has no PRIVET_* variables of the caller, its own entry-point cache
    and the fake site on PYTHONPATH; ``env`` adds to it, ``cwd`` defaults to tmp_path.
    ``installed=False`` loads no installed plugin (``PRIVET_LOAD_PLUGINS=``): faster, and
    independent of which modality plugins this environment has.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    base["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    base["PYTHONPATH"] = str(fake_site.root)
    base["COLUMNS"] = "100"

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120, installed: bool = True) -> subprocess.CompletedProcess:
        full_env = {**base, **({} if installed else {"PRIVET_LOAD_PLUGINS": ""}), **(env or {})}
        return subprocess.run([*launcher(), *args], env=full_env, cwd=cwd or tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    return run
