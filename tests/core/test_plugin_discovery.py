"""Installed plugins: isolation of broken ones, allow/deny lists before import, conflicts.

Each test installs fake distributions (see conftest.FakeSite) and runs the real launcher.
"""

from __future__ import annotations

import json
from pathlib import Path

from privet.plugins import BUILTINS

GOOD = """
    import attrs
    import privet

    class Echo(privet.Cleaner):
        '''Returns each record unchanged.'''

        def clean(self, record):
            return record

    @privet.hookimpl
    def register_cleaners(register):
        register("good.echo", Echo)
"""

BROKEN = """
    raise RuntimeError("the broken plugin cannot start")
"""

#: Writes a marker file when imported: proves whether the module's code ran.
MARKER = """
    import os
    from pathlib import Path

    Path(os.environ["MARKER_FILE"]).write_text("imported")

    import privet

    class Upper(privet.Cleaner):
        '''Uppercases nothing; exists to be listed.'''

        def clean(self, record):
            return record

    @privet.hookimpl
    def register_cleaners(register):
        register("marker.upper", Upper)
"""


def _by_name(stdout: str) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(stdout)}


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("privet: warning:")]


def test_broken_plugin_warns_once_and_the_others_still_load(privet_cli, fake_site):
    fake_site.add("good", GOOD)
    fake_site.add("broken", BROKEN)

    result = privet_cli("plugins")

    assert result.returncode == 0, result.stderr
    naming_it = [w for w in _warnings(result.stderr) if "'broken'" in w]
    assert len(naming_it) == 1
    assert "privet-fake-broken" in naming_it[0]
    assert "RuntimeError: the broken plugin cannot start" in naming_it[0]
    assert "Traceback" not in result.stderr
    assert "good  [privet-fake-good 0.1]  loaded" in result.stdout
    assert "cleaner: good.echo" in result.stdout
    assert "broken  [privet-fake-broken 0.1]  failed" in result.stdout
    assert "source: csv, jsonl" in result.stdout  # the core's built-ins too


def test_broken_plugin_status_and_error_in_json(privet_cli, fake_site):
    fake_site.add("good", GOOD)
    fake_site.add("broken", BROKEN)

    rows = _by_name(privet_cli("plugins", "--json").stdout)

    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"] == "RuntimeError: the broken plugin cannot start"
    assert rows["broken"]["components"] == {}
    assert rows["good"]["status"] == "loaded"
    assert rows["good"]["components"] == {"cleaner": ["good.echo"]}
    assert rows["good"]["distribution"] == "privet-fake-good"
    assert rows["good"]["version"] == "0.1"


def test_strict_plugins_makes_a_broken_plugin_fatal(privet_cli, fake_site):
    fake_site.add("good", GOOD)
    fake_site.add("broken", BROKEN)

    result = privet_cli("plugins", env={"PRIVET_STRICT_PLUGINS": "1"})

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("privet: error:")]
    assert len(errors) == 1
    assert "'broken'" in errors[0] and "PRIVET_STRICT_PLUGINS=1" in errors[0]
    assert "Traceback" not in result.stderr


def test_plugin_with_a_bad_hook_signature_fails_alone(privet_cli, fake_site):
    fake_site.add("good", GOOD)
    fake_site.add("typo", """
        import privet

        @privet.hookimpl
        def register_cleaners(register, unknown_argument):
            pass
    """)

    result = privet_cli("plugins", "--json")

    rows = _by_name(result.stdout)
    assert result.returncode == 0
    assert rows["typo"]["status"] == "failed"
    assert "unknown_argument" in rows["typo"]["error"]
    assert rows["good"]["status"] == "loaded"


def test_plugin_runs_at_import_unless_blocked(privet_cli, fake_site, tmp_path):
    """The control for the tests below: the marker module does write its file when loaded."""
    marker = tmp_path / "marker-imported"
    fake_site.add("marker", MARKER)

    rows = _by_name(privet_cli("plugins", "--json", env={"MARKER_FILE": str(marker)}).stdout)

    assert marker.read_text() == "imported"
    assert rows["marker"]["status"] == "loaded"


def _assert_blocked(result, marker: Path) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    rows = _by_name(result.stdout)
    assert not marker.exists(), "a blocked plugin's module was imported"
    assert rows["marker"]["status"] == "blocked"
    assert rows["marker"]["components"] == {}
    assert rows["marker"]["distribution"] == "privet-fake-marker"
    return rows


def test_dash_p_no_name_blocks_a_plugin_before_import(privet_cli, fake_site, tmp_path):
    marker = tmp_path / "marker-imported"
    fake_site.add("marker", MARKER)
    fake_site.add("good", GOOD)

    result = privet_cli("-p", "no:marker", "plugins", "--json", env={"MARKER_FILE": str(marker)})

    rows = _assert_blocked(result, marker)
    assert rows["marker"]["error"] == "disabled"
    assert rows["good"]["status"] == "loaded"


def test_disable_plugins_variable_blocks_before_import(privet_cli, fake_site, tmp_path):
    marker = tmp_path / "marker-imported"
    fake_site.add("marker", MARKER)
    fake_site.add("good", GOOD)

    result = privet_cli("plugins", "--json", env={"MARKER_FILE": str(marker),
                                                  "PRIVET_DISABLE_PLUGINS": "other, marker"})

    rows = _assert_blocked(result, marker)
    assert rows["good"]["status"] == "loaded"


def test_load_plugins_variable_allows_only_those_named(privet_cli, fake_site, tmp_path):
    marker = tmp_path / "marker-imported"
    fake_site.add("marker", MARKER)
    fake_site.add("good", GOOD)

    result = privet_cli("plugins", "--json", env={"MARKER_FILE": str(marker),
                                                  "PRIVET_LOAD_PLUGINS": "good"})

    rows = _assert_blocked(result, marker)
    assert rows["marker"]["error"] == "not in PRIVET_LOAD_PLUGINS"
    assert rows["good"]["status"] == "loaded"


def test_empty_load_plugins_variable_loads_no_installed_plugin(privet_cli, fake_site, tmp_path):
    marker = tmp_path / "marker-imported"
    fake_site.add("marker", MARKER)
    fake_site.add("good", GOOD)

    result = privet_cli("plugins", "--json", env={"MARKER_FILE": str(marker),
                                                  "PRIVET_LOAD_PLUGINS": ""})

    rows = _assert_blocked(result, marker)
    assert rows["good"]["status"] == "blocked"
    loaded = {name for name, row in rows.items() if row["status"] == "loaded"}
    assert loaded == set(BUILTINS)  # the core's own: exporters, optimizers, schedulers, sources


def test_builtins_cannot_be_disabled(privet_cli):
    result = privet_cli("-p", "no:privet.builtins.sources", "plugins", "--json",
                        env={"PRIVET_DISABLE_PLUGINS": "privet.builtins.schedulers"})

    rows = _by_name(result.stdout)
    assert rows["privet.builtins.sources"]["status"] == "loaded"
    assert rows["privet.builtins.schedulers"]["status"] == "loaded"


def test_dash_p_without_no_prefix_is_a_usage_error(privet_cli):
    result = privet_cli("-p", "marker", "plugins")

    assert result.returncode == 2
    assert "use -p no:NAME" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_component_name_from_two_plugins_names_both(privet_cli, fake_site):
    for name in ("alpha", "beta"):
        fake_site.add(name, """
            import privet

            class Same(privet.Cleaner):
                '''Claims a name another plugin claims too.'''

                def clean(self, record):
                    return record

            @privet.hookimpl
            def register_cleaners(register):
                register("shared.clean", Same)
        """)

    result = privet_cli("plugins")

    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("privet: error: cleaner 'shared.clean' is registered twice")
    assert "'alpha'" in line and "'beta'" in line
    assert "-p no:NAME" in line
    assert "Traceback" not in result.stderr
    # Disabling one of them is the way out the message gives.
    assert privet_cli("-p", "no:beta", "plugins").returncode == 0


PIPELINE = """\
name: uses-plugin
data:
  source: {{name: jsonl, options: {{paths: [data.jsonl]}}}}
  cleaners:
    - {cleaner}
model: {{name: tiny.mlp}}
"""


def _pipeline(tmp_path: Path, cleaner: str) -> Path:
    (tmp_path / "data.jsonl").write_text('{"x": [0.5, 0.5], "label": 1}\n')
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(cleaner=cleaner))
    return path


def test_pipeline_naming_a_failed_plugins_component_shows_its_load_error(
        privet_cli, fake_site, tmp_path, sample_plugins):
    fake_site.add("broken", BROKEN)
    path = _pipeline(tmp_path, "broken.fix")

    result = privet_cli("--plugin-dir", str(sample_plugins), "validate", str(path))

    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"privet: error: {path}:5: data.cleaners.0.name: cleaner 'broken.fix' "
                            f"comes from plugin 'broken', which failed to load")
    assert "the broken plugin cannot start" in error


def test_pipeline_naming_a_blocked_plugins_component_says_it_is_disabled(
        privet_cli, fake_site, tmp_path, sample_plugins):
    fake_site.add("good", GOOD)
    path = _pipeline(tmp_path, "good.echo")
    assert privet_cli("--plugin-dir", str(sample_plugins), "validate", str(path)).returncode == 0

    result = privet_cli("--plugin-dir", str(sample_plugins), "-p", "no:good", "validate", str(path))

    assert result.returncode == 2
    assert "cleaner 'good.echo' comes from plugin 'good', which is disabled" in result.stderr


def test_required_plugin_that_is_missing_is_named(privet_cli, tmp_path, sample_plugins):
    path = _pipeline(tmp_path, "jsonl_is_not_a_cleaner")
    text = path.read_text().replace("name: uses-plugin",
                                    "name: uses-plugin\nplugins: {required: [ocr]}")
    path.write_text(text)

    result = privet_cli("--plugin-dir", str(sample_plugins), "validate", str(path))

    assert result.returncode == 2
    assert "plugins.required: plugin 'ocr' is not installed" in result.stderr
    assert "pip install privet-ocr" in result.stderr
