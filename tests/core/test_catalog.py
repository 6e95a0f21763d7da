"""The catalog: kind -> name -> component, filled only through the component hooks."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

import privet
from privet.catalog import Catalog
from privet.errors import DuplicateComponentError, PluginError, UnknownComponentError
from privet.plugins import PluginHost

SAMPLE = Path(__file__).parent / "sample_plugins"


class Strip(privet.Cleaner):
    """Strips the text field."""

    @attrs.define(frozen=True)
    class Options:
        field: str = "text"

    def clean(self, record):
        record[self.options.field] = record[self.options.field].strip()
        return record


class Plugin:
    """A plugin object registering one cleaner under ``name``."""

    def __init__(self, name: str, cls: type = Strip) -> None:
        self.name, self.cls = name, cls

    @privet.hookimpl
    def register_cleaners(self, register):
        register(self.name, self.cls)


def test_builtins_arrive_through_the_same_hooks_as_plugins(privet_host):
    catalog = privet_host.catalog

    assert catalog.names("scheduler") == ["cosine", "cosine_warmup", "linear_warmup",
                                          "onecycle", "plateau", "step"]
    assert catalog.names("exporter") == ["onnx", "torch_export", "torchscript"]
    assert catalog.names("source") == ["csv", "jsonl"]
    assert catalog.get("source", "jsonl").plugin == "privet.builtins.sources"


def test_registered_component_gets_its_name_plugin_and_summary(privet_host):
    privet_host.register_plugin(Plugin("acme.strip"), "acme")

    entry = privet_host.catalog.get("cleaner", "acme.strip")

    assert entry.cls is Strip and entry.plugin == "acme" and entry.kind == "cleaner"
    assert Strip.name == "acme.strip"
    assert entry.summary == "Strips the text field."
    assert privet_host.catalog.by_plugin("acme") == {"cleaner": ["acme.strip"]}


def test_same_name_in_two_plugins_is_an_error_naming_both(privet_host):
    privet_host.register_plugin(Plugin("acme.strip"), "acme")
    privet_host.register_plugin(Plugin("acme.strip"), "copycat")

    with pytest.raises(DuplicateComponentError) as info:
        privet_host.catalog  # noqa: B018 - building the catalog is what fails

    message = str(info.value)
    assert "cleaner 'acme.strip' is registered twice" in message
    assert "plugin 'acme'" in message and "plugin 'copycat'" in message


def test_same_name_for_different_kinds_is_allowed(privet_host):
    class Source(privet.Source):
        """Nothing."""

        def shards(self):
            return []

        def read(self, shard):
            return iter(())

    class Both:
        @privet.hookimpl
        def register_cleaners(self, register):
            register("acme.thing", Strip)

        @privet.hookimpl
        def register_sources(self, register):
            register("acme.thing", Source)

    privet_host.register_plugin(Both(), "acme")

    assert privet_host.catalog.get("cleaner", "acme.thing").cls is Strip
    assert privet_host.catalog.get("source", "acme.thing").cls is Source


def test_unknown_name_suggests_the_closest_and_lists_installed(privet_host):
    with pytest.raises(UnknownComponentError) as info:
        privet_host.catalog.get("scheduler", "cosin", key_path="train.scheduler.name")

    assert str(info.value) == ("train.scheduler.name: unknown scheduler 'cosin'; did you mean "
                               "'cosine'? (installed: cosine, cosine_warmup, linear_warmup, "
                               "onecycle, plateau, step)")


def test_unknown_name_without_a_close_match_says_what_to_do(privet_host):
    with pytest.raises(UnknownComponentError) as info:
        privet_host.catalog.get("model", "gpt")

    assert str(info.value) == ("unknown model 'gpt' (installed: none; install a plugin that "
                               "provides one)")


def test_registering_a_non_component_class_is_refused(privet_host):
    privet_host.register_plugin(Plugin("acme.bad", cls=dict), "acme")

    with pytest.raises(PluginError, match=r"plugin 'acme' registered cleaner 'acme.bad' as "
                                          r"<class 'dict'>, which is not a subclass of "
                                          r"privet.Cleaner"):
        privet_host.catalog  # noqa: B018


def test_registering_the_wrong_kind_is_refused(privet_host):
    class Wrong:
        @privet.hookimpl
        def register_models(self, register):
            register("acme.strip", Strip)

    privet_host.register_plugin(Wrong(), "acme")

    with pytest.raises(PluginError, match="not a subclass of privet.Model"):
        privet_host.catalog  # noqa: B018


def test_registering_an_empty_name_is_refused():
    with pytest.raises(PluginError, match="registered a cleaner with an empty name"):
        Catalog().add("cleaner", "", Strip, "acme")


def test_registering_a_plugin_name_twice_is_refused(privet_host):
    privet_host.register_plugin(Plugin("acme.strip"), "acme")

    with pytest.raises(PluginError, match="plugin 'acme' is already registered"):
        privet_host.register_plugin(Plugin("acme.other"), "acme")


def test_catalog_is_rebuilt_after_a_new_plugin_registers(privet_host):
    assert privet_host.catalog.names("cleaner") == []

    privet_host.register_plugin(Plugin("acme.strip"), "acme")

    assert privet_host.catalog.names("cleaner") == ["acme.strip"]


def test_require_accepts_loaded_and_rejects_missing_plugins(privet_host):
    privet_host.register_plugin(Plugin("acme.strip"), "acme")
    privet_host.require(["acme"])

    with pytest.raises(PluginError, match=r"plugins.required: plugin 'ocr' is not installed "
                                          r"\(installed: acme\); pip install privet-ocr"):
        privet_host.require(["acme", "ocr"])


def test_failed_plugin_components_report_the_load_error(tmp_path):
    (tmp_path / "shaky.py").write_text("raise ImportError('needs libfoo')\n")
    messages: list[str] = []
    host = PluginHost(strict=False, on_warning=messages.append)
    host.load_builtins()

    host.load_path(tmp_path)

    assert host.infos["shaky"].status == "failed"
    assert messages == [f"plugin 'shaky' (distribution {tmp_path / 'shaky.py'}) failed to load: "
                        f"ImportError: needs libfoo"]
    with pytest.raises(UnknownComponentError, match="comes from plugin 'shaky', which failed "
                                                    "to load: ImportError: needs libfoo"):
        host.catalog.get("model", "shaky.net")


def test_strict_host_raises_on_a_failed_plugin(tmp_path):
    (tmp_path / "shaky.py").write_text("raise ImportError('needs libfoo')\n")
    host = PluginHost(strict=True)

    with pytest.raises(PluginError, match="'shaky'.*ImportError: needs libfoo"):
        host.load_path(tmp_path)


def test_missing_plugin_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="plugin folder .*nope' does not exist"):
        PluginHost().load_path(tmp_path / "nope")


def test_privet_testing_make_validates_options(privet_host):
    privet_host.register_plugin(Plugin("acme.strip"), "acme")

    cleaner = privet_host.make("cleaner", "acme.strip", {"field": "body"})

    assert cleaner.clean({"body": "  hi "}) == {"body": "hi"}
    with pytest.raises(privet.ConfigError, match="acme.strip.feild: unknown key"):
        privet_host.make("cleaner", "acme.strip", {"feild": "body"})


def test_plugin_whose_hook_raises_is_isolated_and_unregistered(privet_host):
    class Broken:
        @privet.hookimpl
        def register_cleaners(self, register):
            register("broken.half", Strip)  # registered before the failure: rolled back
            raise RuntimeError("registry is down")

    messages: list[str] = []
    host = PluginHost(strict=False, on_warning=messages.append)
    host.load_builtins()
    host.register_plugin(Plugin("acme.strip"), "acme")
    broken = Broken()
    host.register_plugin(broken, "broken")

    assert host.catalog.names("cleaner") == ["acme.strip"]
    assert host.infos["broken"].status == "failed"
    assert messages == ["plugin 'broken' (distribution ?) failed to load: "
                        "RuntimeError: registry is down"]
    assert not host.pm.is_registered(broken)
    with pytest.raises(UnknownComponentError, match="comes from plugin 'broken', which failed "
                                                    "to load: RuntimeError: registry is down"):
        host.catalog.get("cleaner", "broken.half")


def test_run_pipeline_loads_named_installed_plugins(run_pipeline, privet_host, tmp_path,
                                                    monkeypatch):
    site = tmp_path / "site"
    info = site / "privet_fake_tiny-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: privet-fake-tiny\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[privet.plugins]\ntiny = privet_fake_tiny\n")
    (site / "privet_fake_tiny.py").write_text((SAMPLE / "tiny.py").read_text())
    monkeypatch.syspath_prepend(str(site))

    outcome = run_pipeline({"name": "t", "data": {"source": {"name": "tiny.synthetic",
                                                             "options": {"n": 32}}},
                            "model": "tiny.mlp", "train": {"batch_size": 8, "device": "cpu"}},
                           plugins=["tiny"])

    outcome.assert_success()
    assert privet_host.infos["tiny"].distribution == "privet-fake-tiny"
    assert privet_host.infos["tiny"].status == "loaded"
    with pytest.raises(PluginError, match="load_installed: plugin 'nope' is not installed"):
        privet_host.load_installed("tiny", "nope")


class Unfinished(privet.Cleaner):
    """Forgets to implement clean()."""


class PlainOptions(Strip):
    """Options written as a plain class: cannot validate a pipeline file."""

    class Options:
        field = "text"


@pytest.mark.parametrize(("cls", "problem"), [
    (Unfinished, "as Unfinished, which does not implement clean"),
    (PlainOptions, "as PlainOptions, which has an Options that is not an attrs class"),
])
def test_unusable_component_classes_are_refused_at_registration(cls, problem):
    with pytest.raises(PluginError, match=f"plugin 'acme' registered cleaner 'acme.x' {problem}"):
        Catalog().add("cleaner", "acme.x", cls, "acme")
