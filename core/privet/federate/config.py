"""The federation file: attrs classes, loading and validation.

Read with the pipeline file's own machinery (:mod:`privet.config`), so a bad key is one
:class:`~privet.errors.ConfigError` naming the key path and the line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Optional

import attrs

from ..config import (SecurityConfig, make_converter, parse_yaml_text, read_raw,
                      run_name_problem, structure)
from ..errors import ConfigError
from ..storage import Storage
from ..validators import OptionValueError, at_least, non_negative


def _plain_name(_instance: Any, attribute: Any, value: str) -> None:
    problem = run_name_problem(value)
    if problem is not None:
        raise OptionValueError(problem.replace("run name", "name"), attribute.name)


@attrs.define
class ClientSpec:
    """One client: a pipeline file over its own data, and overrides for it."""

    name: str = attrs.field(validator=_plain_name)
    pipeline: str
    #: ``key=value`` overrides of that pipeline (as ``privet run -s``).
    overrides: list[str] = attrs.field(factory=list)


@attrs.define
class BestConfig:
    """Which round's global weights are the federation's best (exported from ``final``)."""

    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"


@attrs.define
class FederationConfig:
    """The whole federation file."""

    clients: list[ClientSpec]
    name: str = attrs.field(default="federation", validator=_plain_name)
    runs_dir: str = "runs"
    seed: int = attrs.field(default=0, validator=non_negative)
    rounds: int = attrs.field(default=5, validator=at_least(1))
    #: Local training per round: epochs, or optimizer steps when ``local_steps`` is set.
    local_epochs: int = attrs.field(default=1, validator=at_least(1))
    local_steps: Optional[int] = attrs.field(default=None, validator=at_least(1))
    aggregation: Literal["fedavg", "fedprox"] = "fedavg"
    #: FedProx's proximal weight: each client minimises loss + mu/2 * ||w - w_global||^2.
    mu: float = attrs.field(default=0.0, validator=non_negative)
    best: BestConfig = attrs.field(factory=BestConfig)
    security: SecurityConfig = attrs.field(factory=SecurityConfig)


@attrs.define
class LoadedFederation:
    """A validated federation file and where it came from."""

    config: FederationConfig
    file: str
    base_dir: Path
    lines: dict[str, int]
    text: bytes

    def pipeline_path(self, client: ClientSpec) -> Path:
        """A client's pipeline file, relative to the federation file's folder."""
        p = Path(client.pipeline).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def runs_root(self) -> Path:
        p = Path(self.config.runs_dir).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def digest(self) -> str:
        return hashlib.sha256(self.text).hexdigest()

    def error(self, message: str, path: str, *, near: str | None = None) -> ConfigError:
        """A ConfigError naming ``path`` and its line in this file (or ``near``'s line
        when ``path`` is not written in the file)."""
        parts = (path if path in self.lines or near is None else near).split(".")
        line = None
        while parts and line is None:
            line = self.lines.get(".".join(parts))
            parts.pop()
        return ConfigError(message, path=path, file=self.file, line=line)


def load_federation(path: str | Path, *, base_dir: str | Path | None = None) -> LoadedFederation:
    """Read and validate a federation file; the first problem is one ConfigError line."""
    data, lines = read_raw(path)
    base = Path(base_dir).resolve() if base_dir is not None else Path(path).resolve().parent
    return _structure(data, lines, str(path), base, Path(path).read_bytes())


def load_stored_federation(storage: Storage) -> LoadedFederation:
    """The federation a run folder holds: its own copy of the file, read through its
    storage, with the base folder the manifest recorded (client pipelines are relative)."""
    manifest = storage.read_json_object("manifest.json", what="federation manifest")
    text = storage.read_bytes("federation.yaml")
    file = str(storage.path("federation.yaml"))
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text; the run folder is damaged", file=file) from None
    data, lines = parse_yaml_text(decoded, file)
    base = Path(manifest.get("base_dir") or storage.root).resolve()
    return _structure(data, lines, file, base, text)


def _structure(data: Any, lines: dict[str, int], file: str, base: Path,
               text: bytes) -> LoadedFederation:
    if not isinstance(data, dict):
        raise ConfigError("a federation file must be a mapping at the top level", file=file)
    config = structure(make_converter(base), data, FederationConfig, lines=lines, file=file)
    loaded = LoadedFederation(config, file, base, lines, text)
    _check(loaded)
    return loaded


def _check(loaded: LoadedFederation) -> None:
    c = loaded.config
    if not c.clients:
        raise loaded.error("a federation needs at least one client", "clients")
    seen: dict[str, int] = {}
    for i, client in enumerate(c.clients):
        if client.name in seen:
            raise loaded.error(f"client name {client.name!r} is used twice (also clients."
                               f"{seen[client.name]}); give each client its own name",
                               f"clients.{i}.name")
        seen[client.name] = i
        if not loaded.pipeline_path(client).is_file():
            raise loaded.error(f"pipeline file {str(loaded.pipeline_path(client))!r} not found",
                               f"clients.{i}.pipeline")
    if c.aggregation == "fedprox" and c.mu <= 0:
        raise loaded.error("fedprox needs mu > 0 (e.g. mu: 0.01); mu 0 is fedavg", "mu",
                           near="aggregation")
    if c.aggregation == "fedavg" and c.mu > 0:
        raise loaded.error("mu is FedProx's proximal weight; set aggregation: fedprox to use it",
                           "mu")
