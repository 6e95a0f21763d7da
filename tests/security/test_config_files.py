"""Hostile pipeline files: each is refused with one line naming the file, exit 2, and
nothing is written.

A pipeline file is trusted to say what to run, but it may come from a colleague or a
download: a file that is an alias bomb, binary, not UTF-8, huge or malformed must not
exhaust memory or print a traceback, and a run name must not steer the run folder out
of ``runs_dir``. Every test runs the real launcher (``privet validate`` / ``privet run``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

SAMPLE_PLUGINS = Path(__file__).resolve().parents[1] / "core" / "sample_plugins"

VALID = """\
name: {name}
runs_dir: runs
data:
  source: {{name: tiny.synthetic, options: {{n: 32}}}}
model: tiny.mlp
train: {{epochs: 1, batch_size: 8, device: cpu}}
"""


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" YAML document: ``width ** levels`` values in a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _one_line(result, *, file: Path | None = None) -> str:
    """The single ``privet: error:`` line of a refused command (exit 2, no traceback)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("privet: error: ")
    if file is not None:
        assert str(file) in lines[0]
    return lines[0][len("privet: error: "):]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """A run folder written before the attack: it must stay exactly as it was."""
    run = tmp_path / "runs" / "earlier"
    run.mkdir(parents=True)
    (run / "report.json").write_text('{"status": "completed"}')
    return run


@pytest.mark.parametrize("command", ["validate", "run"])
def test_alias_bomb_is_refused_fast_naming_the_file_and_line(privet_cli, tmp_path, command,
                                                              earlier_run):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) < 600  # 9**9 = 387 million values once expanded
    before = _snapshot(tmp_path / "runs")

    started = time.monotonic()
    result = privet_cli(command, str(bomb), timeout=60)

    assert time.monotonic() - started < 30
    error = _one_line(result, file=bomb)
    assert error.startswith(f"{bomb}:")  # the line of the list that exceeds the budget
    assert "aliases expand this file to more than 10000 values" in error
    assert _snapshot(tmp_path / "runs") == before


def test_alias_bomb_in_a_set_override_is_refused(privet_cli, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(VALID.format(name="demo"))
    flow = "{" + alias_bomb().strip().replace("\n", ", ") + "}"

    result = privet_cli("--plugin-dir", str(SAMPLE_PLUGINS), "validate", str(path),
                        "-s", f"model.options={flow}", timeout=60)

    error = _one_line(result)
    assert "override 'model.options=" in error
    assert "more than 10000 values" in error


def test_recursive_anchor_is_refused(privet_cli, tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\ndata: &d {source: [*d]}\n")

    error = _one_line(privet_cli("validate", str(path)), file=path)

    assert error.startswith(f"{path}:2: a YAML alias refers to the value it is inside")


def test_deep_nesting_is_refused_without_a_recursion_error(privet_cli, tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")

    error = _one_line(privet_cli("validate", str(path)), file=path)

    assert "nested more than 50 levels deep" in error


@pytest.mark.parametrize("command", ["validate", "run"])
def test_binary_file_is_refused(privet_cli, tmp_path, command, earlier_run):
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(b"name: x\n\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    before = _snapshot(tmp_path / "runs")

    error = _one_line(privet_cli(command, str(path)), file=path)

    assert error == (f"{path}:2: the pipeline file is binary (it holds NUL bytes), not a YAML "
                     f"or TOML text file")
    assert _snapshot(tmp_path / "runs") == before


@pytest.mark.parametrize("command", ["validate", "run"])
def test_file_that_is_not_utf8_names_the_byte_and_line(privet_cli, tmp_path, command):
    path = tmp_path / "pipeline.yaml"
    path.write_bytes("name: x\nmodel: caf\u00e9\n".encode("latin-1"))

    error = _one_line(privet_cli(command, str(path)), file=path)

    assert error == (f"{path}:2: the pipeline file is not UTF-8 text (byte 0xe9 at offset 18); "
                     f"save it as UTF-8")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_file_over_one_mib_is_refused_before_parsing(privet_cli, tmp_path, command):
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\n" + "# padding\n" * (1 << 17))  # 1.25 MiB of valid YAML

    error = _one_line(privet_cli(command, str(path)), file=path)

    assert error == (f"{path}: the pipeline file is larger than 1 MiB; it holds settings, not "
                     f"data (point a source at the data)")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_toml_syntax_error_names_the_line(privet_cli, tmp_path, command):
    path = tmp_path / "pipeline.toml"
    path.write_text('name = "x"\nmodel = "tiny.mlp"\n[data\nsource = "tiny.synthetic"\n')

    error = _one_line(privet_cli(command, str(path)), file=path)

    assert error.startswith(f"{path}:3: invalid TOML: ")


@pytest.mark.parametrize(("name", "fragment"), [
    ("../../escaped", "a run name is a plain folder name (no '/', '\\' or '..')"),
    ("'back\\slash'", "a run name is a plain folder name"),
    ("nested/run", "a run name is a plain folder name"),
    ("x" * 300, "a run name has at most 100 characters, got 300"),
    ("''", "a run name cannot be empty"),
])
def test_run_name_cannot_leave_runs_dir(privet_cli, tmp_path, earlier_run, name, fragment):
    project = tmp_path / "project"
    project.mkdir()
    path = project / "pipeline.yaml"
    path.write_text(VALID.format(name=name))
    before = _snapshot(tmp_path / "runs")

    result = privet_cli("--plugin-dir", str(SAMPLE_PLUGINS), "run", str(path), cwd=project)

    error = _one_line(result, file=path)
    assert error.startswith(f"{path}:1: name: {fragment}")
    assert not (project / "runs").exists()
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert _snapshot(tmp_path / "runs") == before


@pytest.mark.parametrize("args", [["--name", "../escaped"], ["-s", "name=../escaped"]])
def test_run_name_from_the_command_line_is_checked_too(privet_cli, tmp_path, args):
    project = tmp_path / "project"
    project.mkdir()
    path = project / "pipeline.yaml"
    path.write_text(VALID.format(name="demo"))

    result = privet_cli("--plugin-dir", str(SAMPLE_PLUGINS), "run", str(path), *args,
                        cwd=project)

    error = _one_line(result)
    assert "name: a run name is a plain folder name" in error
    assert error.startswith("--name: " if args[0] == "--name" else f"{path}:")
    assert not (project / "runs").exists() and not (tmp_path / "escaped").exists()
