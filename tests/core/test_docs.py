"""Meta-tests: the contract and its documentation cannot drift apart.

Every hook is documented in docs/hooks.md with its exact signature and has a test in
test_hooks.py; every key of the pipeline file is in docs/pipeline-file.md with its
default; every module of the core is placed in docs/architecture.md; the examples in
docs/writing-plugins.md and docs/pipeline-file.md run.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
import yaml

from privet import config as config_module
from privet import hookspecs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CORE = ROOT / "core" / "privet"


def hook_functions() -> dict[str, Any]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")}


def signature_text(fn: Any) -> str:
    """``name(param: Type, ...) -> Return`` as written in the source."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {_annotation(p.annotation)}" for p in sig.parameters.values())
    return f"{fn.__name__}({params}) -> {_annotation(sig.return_annotation)}"


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def hook_sections() -> dict[str, str]:
    """Heading text -> section body of docs/hooks.md, for headings that are signatures."""
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    parts = re.split(r"^### `(.+)`\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def test_hookspecs_are_found():
    assert {"register_sources", "register_models", "before_run", "wrap_training",
            "starter_pipeline"} <= set(hook_functions())


@pytest.mark.parametrize("name", sorted(hook_functions()))
def test_every_hook_is_documented_with_its_signature(name):
    fn = hook_functions()[name]
    sections = hook_sections()

    heading = signature_text(fn)
    assert heading in sections, f"docs/hooks.md needs a heading: ### `{heading}`"
    body = sections[heading]
    for param in inspect.signature(fn).parameters:
        assert f"- `{param}`:" in body, f"{name}: parameter {param!r} is not described"
    assert "Example:" in body and "```python" in body, f"{name}: no example"
    assert f"def {name}(" in body, f"{name}: the example does not implement the hook"
    assert "Called" in body, f"{name}: the section does not say when it is called"
    assert f"| `{name}` |" in (DOCS / "hooks.md").read_text(), f"{name}: not in the summary table"


def test_hooks_doc_documents_no_hook_that_does_not_exist():
    documented = {heading.split("(")[0] for heading in hook_sections()}

    assert documented == set(hook_functions())


def _test_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


@pytest.mark.parametrize("name", sorted(hook_functions()))
def test_every_hook_has_a_test(name):
    tests = _test_functions(Path(__file__).with_name("test_hooks.py"))

    assert any(t.startswith(f"test_{name}_") for t in tests), \
        f"tests/core/test_hooks.py needs a test named test_{name}_..."


# --- the pipeline file reference ----------------------------------------------------------


def config_fields(cls: type = config_module.PipelineConfig,
                  prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, default) for every field of the pipeline file, sections included."""
    hints = attrs.resolve_types(cls, globalns=vars(config_module))
    for field in attrs.fields(hints):
        key = f"{prefix}{field.name}"
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        yield key, default
        section = _section_class(field.type)
        if section is not None:
            yield from config_fields(section, f"{key}.")


def _section_class(tp: Any) -> type | None:
    candidates = [tp, *getattr(tp, "__args__", ())]
    for c in candidates:
        if attrs.has(c) and c is not config_module.ComponentSpec:
            return c
    return None


def _default_text(default: Any) -> str:
    if isinstance(default, str):
        return default
    if isinstance(default, tuple):
        default = list(default)
    return json.dumps(default)


def _rows(path: Path) -> dict[str, list[str]]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([a-z_.]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_every_pipeline_key_is_documented_with_its_default():
    rows = _rows(DOCS / "pipeline-file.md")
    fields = dict(config_fields())

    missing = sorted(set(fields) - set(rows))
    assert not missing, f"docs/pipeline-file.md lacks rows for {missing}"
    for key, default in fields.items():
        cells = rows[key]
        if default is attrs.NOTHING:
            assert cells[1] == "required", key
        elif attrs.has(type(default)):
            assert cells[1] == "", f"{key}: a section has no default of its own"
        else:
            assert cells[1] == f"`{_default_text(default)}`", \
                f"{key}: default in the doc is {cells[1]}, in the code {_default_text(default)}"


def test_pipeline_doc_has_no_key_that_does_not_exist():
    assert set(_rows(DOCS / "pipeline-file.md")) == {key for key, _ in config_fields()}


def test_pipeline_doc_example_is_a_valid_pipeline():
    text = (DOCS / "pipeline-file.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", text, flags=re.S).group(1)

    loaded = config_module.load_config(data=yaml.safe_load(example))

    assert loaded.config.name == "reviews"
    assert loaded.config.train.scheduler.name == "cosine_warmup"
    assert [c.name for c in loaded.config.data.cleaners] == ["text.redact_pii", "text.dedupe"]


# --- architecture: every module is placed ---------------------------------------------------


def test_architecture_doc_names_every_core_module():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(str(p.relative_to(CORE)) for p in CORE.rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py") and "templates" not in p.parts)

    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not describe {missing}"


# --- the plugin author's example runs --------------------------------------------------------


def doc_examples(path: Path) -> dict[str, str]:
    """Files shown in a doc: a ``<!-- example: PATH -->`` line, then a fenced block."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return dict(found)


@pytest.mark.slow
def test_writing_plugins_example_works_as_written(tmp_path):
    examples = doc_examples(DOCS / "writing-plugins.md")
    assert set(examples) == {"plugins/acme.py", "pipeline.yaml", "tests/test_acme.py"}
    for rel, content in examples.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content, encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "tests/test_acme.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_writing_plugins_example_pipeline_validates(tmp_path, privet_cli):
    examples = doc_examples(DOCS / "writing-plugins.md")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "acme.py").write_text(examples["plugins/acme.py"])
    (tmp_path / "pipeline.yaml").write_text(examples["pipeline.yaml"])
    (tmp_path / "data.csv").write_text("a,b,y\n1,2,0\n")

    result = privet_cli("validate", "pipeline.yaml", installed=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pipeline.yaml: valid (4 components)"  # optimizer included
