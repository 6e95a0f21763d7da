"""Plugin discovery and the typed facade over pluggy.

Installed plugins are entry points in the group ``privet.plugins``. stevedore loads
them, but only those allowed: the allow/deny lists are applied to entry-point *names*
before anything is imported, because importing a plugin runs its code. Each failure is
reported on its own; the rest keep working (``PRIVET_STRICT_PLUGINS=1`` makes it fatal).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs
import pluggy

from . import hookspecs
from .catalog import Catalog
from .errors import PluginError

GROUP = "privet.plugins"
#: Core modules registered through the same hooks as any plugin (pytest's default_plugins).
BUILTINS = ("privet.builtins.optimizers", "privet.builtins.schedulers", "privet.builtins.exporters",
            "privet.builtins.sources", "privet.builtins.keys")
ENV_DISABLE = "PRIVET_DISABLE_PLUGINS"
ENV_LOAD = "PRIVET_LOAD_PLUGINS"
ENV_STRICT = "PRIVET_STRICT_PLUGINS"
ENV_TRACE = "PRIVET_TRACE_PLUGINS"
ENV_PATHS = "PRIVET_PLUGIN_PATHS"

_COMPONENT_HOOKS = {
    "source": "register_sources",
    "cleaner": "register_cleaners",
    "augmenter": "register_augmenters",
    "model": "register_models",
    "optimizer": "register_optimizers",
    "scheduler": "register_schedulers",
    "exporter": "register_exporters",
    "key_provider": "register_key_providers",
    "privacy": "register_privacy_mechanisms",
}


class PluginWarning(UserWarning):
    """A plugin failed to load; the others keep working."""


@attrs.define
class PluginInfo:
    """What ``privet plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    status: str  # "loaded" | "blocked" | "failed"
    origin: str  # "builtin" | "entry point" | "path" | "registered"
    error: str | None = None


def _env_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


class PluginHost:
    """Holds the pluggy manager, the plugins' status and the catalog built from them.

    The rest of the core calls hooks only through this class' typed methods.
    """

    def __init__(self, *, strict: bool | None = None, trace: bool | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.strict = (os.environ.get(ENV_STRICT, "") not in ("", "0")) if strict is None else strict
        self._catalog: Catalog | None = None
        self._commands_registered = False
        #: Names blocked by ``-p no:NAME`` / PRIVET_DISABLE_PLUGINS: entry points and
        #: plugin-folder modules alike are skipped before import.
        self.disabled: set[str] = set()
        self._on_warning = on_warning
        if (os.environ.get(ENV_TRACE, "") not in ("", "0")) if trace is None else trace:
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()

    # -- loading -----------------------------------------------------------------------

    def register_plugin(self, obj: Any, name: str | None = None, *, origin: str = "registered",
                        distribution: str | None = None, version: str | None = None) -> str:
        """Register a module or object of hook implementations under ``name``."""
        name = name or getattr(obj, "__name__", None) or type(obj).__name__
        if name in self.infos and self.infos[name].status == "loaded":
            raise PluginError(f"plugin {name!r} is already registered")
        self.pm.register(obj, name=name)
        try:
            self.pm.check_pending()
        except Exception:
            self.pm.unregister(obj)  # a rejected plugin must not keep hooks registered
            raise
        self.infos[name] = PluginInfo(name, distribution, version, "loaded", origin)
        self._catalog = None
        return name

    def load_builtins(self) -> None:
        from . import __version__

        for modname in BUILTINS:
            module = importlib.import_module(modname)
            self.register_plugin(module, modname, origin="builtin", distribution="privet",
                                 version=__version__)

    def load_entry_points(self, *, disabled: Iterable[str] = (), only: Iterable[str] | None = None) -> None:
        """Load installed plugins, skipping the disabled ones without importing them."""
        from stevedore.named import NamedExtensionManager

        disabled = set(disabled)
        only_set = None if only is None else set(only)
        eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}
        allowed = []
        for name, ep in sorted(eps.items()):
            dist, version = _dist_of(ep)
            if name in self.infos and self.infos[name].status == "loaded":
                continue  # loaded by an earlier call: neither reload nor mark it blocked
            if name in disabled or (only_set is not None and name not in only_set):
                why = "disabled" if name in disabled else f"not in {ENV_LOAD}"
                self.infos[name] = PluginInfo(name, dist, version, "blocked", "entry point", why)
            else:
                allowed.append(name)
        if not allowed:
            return
        failures: list[tuple[str, BaseException]] = []

        def on_failure(_manager: Any, ep: Any, err: BaseException) -> None:
            failures.append((ep.name, err))

        manager = NamedExtensionManager(
            GROUP, names=allowed, name_order=True, on_load_failure_callback=on_failure,
            on_missing_entrypoints_callback=lambda names: None)
        for ext in manager.extensions:
            dist, version = _dist_of(eps.get(ext.name, ext.entry_point))
            try:
                self.register_plugin(ext.plugin, ext.name, origin="entry point",
                                     distribution=dist, version=version)
            except Exception as err:  # a plugin with bad hook signatures, say
                failures.append((ext.name, err))
        for name, err in failures:
            dist, version = _dist_of(eps[name]) if name in eps else (None, None)
            self._fail(name, dist, version, "entry point", err)

    def load_path(self, folder: str | os.PathLike[str]) -> None:
        """Load every ``*.py`` module in ``folder`` as an in-house plugin."""
        folder = Path(folder)
        if not folder.is_dir():
            raise PluginError(f"plugin folder {str(folder)!r} does not exist; check --plugin-dir "
                              f"or plugins.paths")
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            name = path.stem
            if name in self.infos and self.infos[name].status == "loaded":
                continue
            if name in self.disabled:  # -p no:NAME blocks a folder module too, unimported
                self.infos[name] = PluginInfo(name, str(path), None, "blocked", "path", "disabled")
                self._catalog = None
                continue
            modname = f"privet_local_plugins.{name}"
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
                self.register_plugin(module, name, origin="path", distribution=str(path))
            except (Exception, SystemExit) as err:  # sys.exit() at import stops only itself
                sys.modules.pop(modname, None)
                self._fail(name, str(path), None, "path", err)

    def _fail(self, name: str, dist: str | None, version: str | None, origin: str,
              err: BaseException) -> None:
        msg = f"{type(err).__name__}: {err}"
        self.infos[name] = PluginInfo(name, dist, version, "failed", origin, msg)
        self._catalog = None
        line = f"plugin {name!r} (distribution {dist or '?'}) failed to load: {msg}"
        if self.strict:
            raise PluginError(line + f" ({ENV_STRICT}=1)") from err
        if self._on_warning is not None:
            self._on_warning(line)
        else:
            warnings.warn(line, PluginWarning, stacklevel=3)

    # -- the catalog ---------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = self._build_catalog()
        return self._catalog

    def _build_catalog(self) -> Catalog:
        """Every loaded plugin's components; a plugin whose hooks fail is isolated first.

        A name claimed by two plugins stays an error naming both: which one to keep is
        the user's choice (``-p no:NAME``), not the order of installation.
        """
        catalog = Catalog()
        for name, plugin in self.pm.list_name_plugin():
            for entry in self._components_of(name, plugin) or ():
                catalog.add(entry.kind, entry.name, entry.cls, name)
        for info in self.infos.values():
            if info.status == "blocked":
                catalog.unavailable[info.name] = f"is disabled ({info.error}); enable it to use it"
            elif info.status == "failed":
                catalog.unavailable[info.name] = f"failed to load: {info.error}"
        return catalog

    def _components_of(self, name: str, plugin: Any) -> list[Any] | None:
        """Call one plugin's ``register_*`` hooks into a staging catalog.

        A hook that raises, or registers something invalid, fails that plugin alone, as a
        failed import does: one warning, status ``failed``, its hooks unregistered so none
        of them runs later (fatal under ``PRIVET_STRICT_PLUGINS=1``). Returns ``None`` then.
        """
        staging = Catalog()
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        try:
            for kind, hookname in _COMPONENT_HOOKS.items():
                caller = self.pm.subset_hook_caller(hookname, remove_plugins=others)

                def register(cname: str, cls: Any, _kind: str = kind) -> None:
                    staging.add(_kind, cname, cls, name)

                caller(register=register)
        except Exception as err:
            self._isolate(name, plugin, err)
            return None
        return list(staging)

    def _isolate(self, name: str, plugin: Any, err: Exception) -> None:
        """Unregister a plugin whose hook failed and report it like a failed import."""
        info = self.infos.get(name)
        if info is None or info.origin == "builtin":
            raise err  # the core's own built-ins failing is a bug, not a plugin to skip
        self.pm.unregister(plugin)
        self._fail(name, info.distribution, info.version, info.origin, err)

    # -- typed facade over the run hooks ---------------------------------------------------

    def before_run(self, run: Any) -> None:
        self.pm.hook.before_run(run=run)

    def wrap_training(self, run: Any, objects: Any) -> None:
        self.pm.hook.wrap_training(run=run, objects=objects)

    def after_epoch(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.pm.hook.after_epoch(run=run, epoch=epoch, metrics=metrics)

    def after_checkpoint(self, run: Any, path: Any, step: int) -> None:
        self.pm.hook.after_checkpoint(run=run, path=path, step=step)

    def after_run(self, run: Any, report: dict[str, Any]) -> None:
        self.pm.hook.after_run(run=run, report=report)

    def on_run_error(self, run: Any, error: BaseException) -> None:
        self.pm.hook.on_run_error(run=run, error=error)

    def register_commands(self, cli: Any) -> None:
        """Let each plugin add commands; one that raises is isolated like a failed import."""
        if self._commands_registered:
            return
        self._commands_registered = True
        for name, plugin in self.pm.list_name_plugin():
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            try:
                self.pm.subset_hook_caller("register_commands", remove_plugins=others)(cli=cli)
            except Exception as err:
                self._isolate(name, plugin, err)

    def starter_pipeline(self, modality: str) -> str | None:
        return self.pm.hook.starter_pipeline(modality=modality)

    def require(self, names: Iterable[str], *, key_path: str = "plugins.required") -> None:
        """Fail unless every named plugin is loaded (``plugins.required`` in a pipeline)."""
        self.catalog  # noqa: B018 - a plugin whose hooks fail is marked failed by this
        for name in names:
            info = self.infos.get(name)
            if info is None:
                installed = ", ".join(sorted(n for n, i in self.infos.items() if i.origin != "builtin"))
                raise PluginError(f"{key_path}: plugin {name!r} is not installed "
                                  f"(installed: {installed or 'none'}); pip install privet-{name}")
            if info.status != "loaded":
                raise PluginError(f"{key_path}: plugin {name!r} is {info.status}: {info.error}")


def _dist_of(ep: Any) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def load_plugins(*, disable: Iterable[str] = (), paths: Iterable[str] = (),
                 strict: bool | None = None,
                 on_warning: Callable[[str], None] | None = None) -> PluginHost:
    """Build a host with built-ins, allowed entry points and folders of in-house plugins.

    ``disable`` adds to ``PRIVET_DISABLE_PLUGINS``; ``PRIVET_LOAD_PLUGINS`` (if set, even
    empty) restricts entry points to those named. ``paths`` adds to ``PRIVET_PLUGIN_PATHS``.
    """
    host = PluginHost(strict=strict, on_warning=on_warning)
    host.load_builtins()
    host.disabled = set(disable) | set(_env_list(os.environ.get(ENV_DISABLE)) or [])
    host.load_entry_points(disabled=host.disabled, only=_env_list(os.environ.get(ENV_LOAD)))
    all_paths = list(_env_list_paths(os.environ.get(ENV_PATHS))) + [str(p) for p in paths]
    for folder in dict.fromkeys(all_paths):
        host.load_path(folder)
    host.catalog  # noqa: B018 - run the component hooks now: a failing one warns at start-up
    return host


def _env_list_paths(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]
