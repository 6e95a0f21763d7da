"""``privet new plugin``: the generated package installs, is listed, and its own tests pass.

The package is installed with the project's pip into a fresh ``--target`` folder put on
PYTHONPATH (``--no-deps --no-build-isolation``: no network, nothing added to the shared
environment, nothing to uninstall).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from privet.commands.new import render_plugin
from privet.errors import UsageError


def test_new_plugin_writes_a_complete_package(privet_cli, tmp_path):
    result = privet_cli("new", "plugin", "acme-demo")

    assert result.returncode == 0, result.stderr
    root = tmp_path / "acme-demo"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "src/acme_demo/__init__.py",
                     "src/acme_demo/plugin.py", "tests/test_plugin.py"]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "acme-demo"' in pyproject
    assert '[project.entry-points."privet.plugins"]\nacme-demo = "acme_demo.plugin"' in pyproject
    plugin = (root / "src/acme_demo/plugin.py").read_text()
    assert 'register("acme-demo.lowercase", Lowercase)' in plugin
    assert "{{" not in "".join((root / f).read_text() for f in files)
    assert "wrote plugin 'acme-demo' to acme-demo (5 files)" in result.stdout


@pytest.mark.slow
def test_new_plugin_installs_lists_its_component_and_its_tests_pass(privet_cli, tmp_path):
    assert privet_cli("new", "plugin", "acme-demo", "--dir", "src-acme").returncode == 0
    target = tmp_path / "installed"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--no-input", "--target", str(target),
         str(tmp_path / "src-acme")],
        capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (target / "acme_demo" / "plugin.py").is_file()

    listed = privet_cli("plugins", "--json", env={"PYTHONPATH": str(target)})

    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["acme-demo"] == {
        "name": "acme-demo", "distribution": "acme-demo", "version": "0.1.0",
        "status": "loaded", "origin": "entry point", "error": None,
        "components": {"cleaner": ["acme-demo.lowercase"]},
    }

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path / "src-acme", env={**_clean_env(), "PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PRIVET_", "PYTEST_")) and k != "PYTHONPATH"}


@pytest.mark.parametrize("name", ["Acme", "acme demo", "-acme", "acme-", "a", "1acme"])
def test_new_plugin_rejects_bad_names(tmp_path, name):
    with pytest.raises(UsageError, match="use lowercase letters, digits"):
        render_plugin(name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_new_plugin_refuses_a_folder_that_is_not_empty(privet_cli, tmp_path):
    (tmp_path / "acme-demo").mkdir()
    (tmp_path / "acme-demo" / "keep.txt").write_text("mine")

    result = privet_cli("new", "plugin", "acme-demo")

    assert result.returncode == 2
    assert "acme-demo already exists and is not empty; choose another --dir" in result.stderr
    assert sorted(p.name for p in (tmp_path / "acme-demo").iterdir()) == ["keep.txt"]


def test_new_plugin_package_uses_underscores(tmp_path):
    written = render_plugin("acme_ocr2", tmp_path / "p")

    assert Path(tmp_path / "p/src/acme_ocr2/plugin.py") in written
    plugin = (tmp_path / "p/src/acme_ocr2/plugin.py").read_text()
    assert 'register("acme_ocr2.lowercase", Lowercase)' in plugin
