"""Fixtures of the packaging tests: the built distributions, and fresh virtualenvs.

The machinery (and why the virtualenvs borrow torch through symbolic links) is in
packaging_support.py.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for packaging_support
from packaging_support import (DISTRIBUTIONS, Dists, Venv, build_all, link_packages,  # noqa: E402
                               requirement_closure, wheel_requirements)
from packaging.utils import canonicalize_name  # noqa: E402


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Every distribution built once per session (shared by pytest-xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / "privet-dists"
    with open(shared / "privet-dists.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            work = shared / "privet-dists-work"
            shutil.rmtree(work, ignore_errors=True)
            build_all(folder / "out", work)
            shutil.rmtree(work, ignore_errors=True)
            (folder / "complete").touch()
    return Dists(folder / "out")


@pytest.fixture
def make_venv(dists: Dists, tmp_path: Path) -> Callable[..., Venv]:
    """``make_venv("privet", "privet-text", tools=["pytest"])``: a venv with those wheels."""

    def make(*names: str, tools: Iterable[str] = ()) -> Venv:
        wheels = [dists.wheel(n) for n in names]
        roots = [r for w in wheels for r in wheel_requirements(w)]
        # pip installs the wheels; setuptools builds `privet new plugin`'s package
        roots += ["pip", "setuptools", *tools]
        provided = {canonicalize_name(n) for n in DISTRIBUTIONS}
        path = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                       timeout=120)
        shared = tmp_path / "third-party"
        link_packages(requirement_closure(roots, provided), shared)
        venv = Venv(path, tmp_path / "work")
        (venv.workdir / ".cache").mkdir(parents=True)
        (venv.site / "_privet_third_party.pth").write_text(f"{shared}\n", encoding="utf-8")
        venv.pip_install("--only-binary", ":all:", *map(str, wheels))
        return venv

    return make
