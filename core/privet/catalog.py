"""The catalog: kind -> name -> component class, filled by the component hooks."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterator

import attrs

from .components import BASES, KINDS, Component
from .errors import DuplicateComponentError, PluginError, UnknownComponentError


@attrs.define
class Entry:
    """One registered component and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def _component_problem(cls: type) -> str | None:
    """What makes a component class unusable, found at registration instead of mid-run."""
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"does not implement {missing}"
    if not attrs.has(getattr(cls, "Options", None) or object):
        return "has an Options that is not an attrs class (decorate it with @attrs.define)"
    return None


@attrs.define
class Catalog:
    """Every component of every loaded plugin, by kind and name."""

    entries: dict[str, dict[str, Entry]] = attrs.field(factory=lambda: {k: {} for k in KINDS})
    #: plugin name -> why it is unavailable ("disabled ...", "failed to load: ...").
    unavailable: dict[str, str] = attrs.field(factory=dict)

    def add(self, kind: str, name: str, cls: Any, plugin: str) -> None:
        if kind not in self.entries:
            raise PluginError(f"plugin {plugin!r}: unknown component kind {kind!r}")
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} with an empty name")
        base = BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin {plugin!r} registered {kind} {name!r} as {cls!r}, which is not a "
                f"subclass of privet.{base.__name__}")
        problem = _component_problem(cls)
        if problem is not None:
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} as {cls.__name__}, "
                              f"which {problem}")
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} and by "
                f"plugin {plugin!r}; disable one of them (-p no:NAME)")
        cls.name = name
        self.entries[kind][name] = Entry(kind, name, cls, plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def __iter__(self) -> Iterator[Entry]:
        for kind in KINDS:
            yield from (self.entries[kind][n] for n in sorted(self.entries[kind]))

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self:
            if e.plugin == plugin:
                out.setdefault(e.kind, []).append(e.name)
        return out

    def get(self, kind: str, name: str, *, key_path: str | None = None) -> Entry:
        """Look a component up; unknown names get 'did you mean' and the installed list."""
        found = self.entries.get(kind, {}).get(name)
        if found is not None:
            return found
        prefix = name.split(".", 1)[0] if "." in name else None
        if prefix is not None and prefix in self.unavailable:
            raise UnknownComponentError(
                f"{kind} {name!r} comes from plugin {prefix!r}, which {self.unavailable[prefix]}",
                path=key_path)
        installed = self.names(kind)
        close = difflib.get_close_matches(name, installed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(installed) if installed else "none; install a plugin that provides one"
        raise UnknownComponentError(
            f"unknown {kind} {name!r}{hint} (installed: {listing})", path=key_path)
