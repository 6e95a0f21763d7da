"""Plugins use the public API only: ``privet``, ``privet.io`` and ``privet.testing``.

Everything else in the core may change between releases; a plugin that imports
``privet.train.loading`` or ``privet.builtins.sources`` breaks on the next refactor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import privet

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_MODULES = {"privet", "privet.io", "privet.testing"}


def _private_imports(path: Path, text: str | None = None) -> list[str]:
    found = []
    text = path.read_text(encoding="utf-8") if text is None else text
    for node in ast.walk(ast.parse(text)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if (name == "privet" or name.startswith("privet.")) and name not in PUBLIC_MODULES:
                found.append(f"{path.name}:{node.lineno} imports {name}")
    return found


def test_plugin_sources_import_only_the_public_api():
    sources = sorted(ROOT.glob("plugins/*/src/**/*.py"))
    assert sources, "no plugin sources found"
    bad = [hit for path in sources for hit in _private_imports(path)]
    assert bad == [], "\n".join(bad)


def test_the_template_plugin_imports_only_the_public_api():
    templates = sorted((ROOT / "core/privet/templates").rglob("*.py.tmpl"))
    assert templates
    for template in templates:  # {{name}} placeholders sit in strings and comments only
        assert _private_imports(template, template.read_text().replace("{{", "x").replace("}}", "x")) == []


def test_what_plugins_need_is_exported_from_privet():
    for name in ("RunContext", "TrainingObjects", "load_trained", "OptionValueError", "positive",
                 "probability", "existing_path", "existing_paths", "Model", "Source", "Cleaner",
                 "Optimizer", "DropRecord", "hookimpl"):
        assert name in privet.__all__, name
        assert getattr(privet, name) is not None


def test_the_private_import_check_catches_one(tmp_path):
    sample = tmp_path / "plugin.py"
    sample.write_text("from privet.train.loading import load_trained\nimport privet.io\n"
                      "from privet import Model\nimport privet.config\n")
    assert _private_imports(sample) == ["plugin.py:1 imports privet.train.loading",
                                        "plugin.py:4 imports privet.config"]
