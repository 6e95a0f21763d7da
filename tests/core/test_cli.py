"""The launcher: fast start (no torch), in-house plugin folders, tracing, init, plugin commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import privet

#: Runs the launcher's main() in this interpreter, then reports whether torch got imported.
_PROBE = """\
import atexit, sys
atexit.register(lambda: print("TORCH-IMPORTED" if "torch" in sys.modules else "NO-TORCH",
                              file=sys.stderr))
from privet.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["plugins"], ["plugins", "--json"],
                                  ["new", "--help"]],
                         ids=lambda a: " ".join(a))
def test_startup_commands_do_not_import_torch(args, privet_cli, tmp_path, sample_plugins):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVET_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # With the tests' in-house plugin too: plugin modules must not import torch either.
    cmd = [sys.executable, "-c", _PROBE, "--plugin-dir", str(sample_plugins), *args]

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "NO-TORCH"


_LIGHT_PROBE = """\
import atexit, sys
atexit.register(lambda: print(sorted(m for m in ("attr", "pluggy", "privet.components")
                                     if m in sys.modules), file=sys.stderr))
from privet.cli import main
main(sys.argv[1:])
"""


def test_help_imports_only_click_and_the_launcher():
    result = subprocess.run([sys.executable, "-c", _LIGHT_PROBE, "--help"], capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_probe_detects_a_torch_import(tmp_path):
    """The control for the test above: a command that does import torch is caught."""
    probe = _PROBE.replace("from privet.cli import main",
                           "import torch\nfrom privet.cli import main")
    result = subprocess.run([sys.executable, "-c", probe, "--version"], capture_output=True,
                            text=True, timeout=120)

    assert result.stderr.strip().splitlines()[-1] == "TORCH-IMPORTED"


def test_help_lists_commands_without_importing_them(privet_cli):
    result = privet_cli("--help")

    assert result.returncode == 0
    for name in ("plugins", "validate", "new", "init", "run", "resume", "export", "predict"):
        assert f"\n  {name} " in result.stdout
    assert "Check a pipeline file without touching data." in result.stdout


def test_version_lists_the_installed_plugin_distributions(privet_cli, fake_site):
    # a plugin whose import would fail: --version reads metadata only, it imports nothing
    fake_site.add("acme", "raise RuntimeError('imported')", dist="acme-privet", version="2.3.4")

    result = privet_cli("--version")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"privet, version {privet.__version__}", "plugins:"]
    assert "  acme-privet 2.3.4 (acme)" in lines
    assert result.stderr == ""


def test_plugin_dir_loads_every_py_module_as_a_plugin(privet_cli, sample_plugins):
    result = privet_cli("--plugin-dir", str(sample_plugins), "plugins", "--json", installed=False)

    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tiny"]["status"] == "loaded"
    assert rows["tiny"]["origin"] == "path"
    assert rows["tiny"]["distribution"] == str(sample_plugins / "tiny.py")
    assert rows["tiny"]["components"] == {"source": ["tiny.synthetic"], "model": ["tiny.mlp"]}


def test_plugins_verbose_shows_component_options_and_plugin_commands(privet_cli, sample_plugins):
    result = privet_cli("--plugin-dir", str(sample_plugins), "plugins", "-v", installed=False)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    model = lines.index("    model: tiny.mlp")
    assert lines[model + 1].startswith("        tiny.mlp: Two-layer perceptron")
    assert lines[model + 2:model + 4] == ["            hidden: int (default 8)",
                                          "            fail_at_step: int (default 0)"]
    assert "            min_lr: float (default 0.0)" in lines  # the built-in cosine scheduler
    assert lines[-1] == "plugin commands: tiny-hello"


def test_plugin_dir_skips_private_modules_and_isolates_broken_ones(privet_cli, tmp_path):
    folder = tmp_path / "plugs"
    folder.mkdir()
    (folder / "_helpers.py").write_text("raise SystemExit('must not be imported')\n")
    (folder / "bad.py").write_text("import does_not_exist_anywhere\n")
    (folder / "fine.py").write_text(
        "import privet\n\n"
        "class Keep(privet.Cleaner):\n"
        "    '''Keeps records.'''\n\n"
        "    def clean(self, record):\n"
        "        return record\n\n"
        "@privet.hookimpl\n"
        "def register_cleaners(register):\n"
        "    register('fine.keep', Keep)\n")

    result = privet_cli("--plugin-dir", str(folder), "plugins", "--json", installed=False)

    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert "_helpers" not in rows
    assert rows["bad"]["status"] == "failed"
    assert "No module named 'does_not_exist_anywhere'" in rows["bad"]["error"]
    assert rows["fine"]["components"] == {"cleaner": ["fine.keep"]}
    assert "plugin 'bad'" in result.stderr


def test_plugin_dir_that_does_not_exist_is_a_usage_error(privet_cli, tmp_path):
    result = privet_cli("--plugin-dir", str(tmp_path / "nope"), "plugins", installed=False)

    assert result.returncode == 2
    assert "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_pipeline_plugins_paths_are_loaded_by_validate(privet_cli, sample_plugins, tmp_path):
    project = tmp_path / "project"
    (project / "plugins").mkdir(parents=True)
    (project / "plugins" / "tiny.py").write_text((sample_plugins / "tiny.py").read_text())
    pipeline = project / "pipeline.yaml"
    pipeline.write_text("plugins: {paths: [plugins], required: [tiny]}\n"
                        "data: {source: tiny.synthetic}\n"
                        "model: tiny.mlp\n")

    result = privet_cli("validate", str(pipeline), cwd=tmp_path, installed=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{pipeline}: valid (3 components)"  # source, model, optimizer


def test_pipeline_plugins_paths_missing_folder_is_named(privet_cli, tmp_path):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("plugins: {paths: [mine]}\ndata: {source: jsonl}\nmodel: x\n")

    result = privet_cli("validate", str(pipeline), installed=False)

    assert result.returncode == 2
    assert f"plugin folder '{tmp_path / 'mine'}' does not exist" in result.stderr


def test_trace_plugins_prints_hook_calls(privet_cli, sample_plugins):
    quiet = privet_cli("--plugin-dir", str(sample_plugins), "plugins", installed=False)
    traced = privet_cli("--plugin-dir", str(sample_plugins), "plugins",
                        env={"PRIVET_TRACE_PLUGINS": "1"}, installed=False)

    assert traced.returncode == 0
    assert "register_sources" not in quiet.stderr
    for hook in ("register_sources", "register_cleaners", "register_augmenters",
                 "register_models", "register_schedulers", "register_exporters"):
        assert f"  {hook} [hook]" in traced.stderr
        assert f"finish {hook} -->" in traced.stderr
    assert traced.stdout == quiet.stdout


def test_init_without_a_plugin_for_the_modality_is_a_clear_error(privet_cli, tmp_path):
    result = privet_cli("init", "text", installed=False)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "privet: error: no installed plugin provides a starter pipeline for 'text' "
        "(loaded plugins: none); pip install privet-text")
    assert not (tmp_path / "pipeline.yaml").exists()


def test_init_writes_the_plugins_starter_pipeline_and_it_validates(privet_cli, sample_plugins,
                                                                   tmp_path):
    result = privet_cli("--plugin-dir", str(sample_plugins), "init", "tiny", installed=False)

    assert result.returncode == 0, result.stderr
    written = tmp_path / "pipeline.yaml"
    assert written.read_text().startswith("name: tiny\n")
    validated = privet_cli("--plugin-dir", str(sample_plugins), "validate", "pipeline.yaml",
                           installed=False)
    assert validated.returncode == 0, validated.stderr


def test_init_refuses_to_overwrite_without_force(privet_cli, sample_plugins, tmp_path):
    (tmp_path / "mine.yaml").write_text("keep me\n")

    refused = privet_cli("--plugin-dir", str(sample_plugins), "init", "tiny", "-o", "mine.yaml",
                         installed=False)
    assert refused.returncode == 2
    assert "mine.yaml already exists; pass --force to overwrite it" in refused.stderr
    assert (tmp_path / "mine.yaml").read_text() == "keep me\n"

    forced = privet_cli("--plugin-dir", str(sample_plugins), "init", "tiny", "-o", "mine.yaml",
                        "--force", installed=False)
    assert forced.returncode == 0
    assert (tmp_path / "mine.yaml").read_text().startswith("name: tiny\n")


def test_plugin_command_is_found_on_demand(privet_cli, sample_plugins):
    result = privet_cli("--plugin-dir", str(sample_plugins), "tiny-hello", "tests", installed=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello tests from tiny"


def test_unknown_command_is_a_usage_error(privet_cli):
    result = privet_cli("no-such-command", installed=False)

    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr
