"""The pipeline file: attrs classes, loading (YAML/TOML), overrides and validation.

Every error names the key path (``train.epochs``) and, for YAML, the file line. Each
component's ``options`` are validated against that component's own attrs class.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, get_args, get_origin

import attrs
import cattrs
import yaml
from cattrs.errors import IterableValidationError, IterableValidationNote

from .errors import ConfigError, PrivetError
from .validators import OptionValueError

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog


@attrs.define
class ComponentSpec:
    """A component reference: ``{name: text.jsonl, options: {...}}`` or just ``text.jsonl``."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class PluginsConfig:
    required: list[str] = attrs.field(factory=list)
    paths: list[str] = attrs.field(factory=list)


@attrs.define
class SplitConfig:
    """How records are split: ``random`` (seeded), ``ordered`` (last part is val) or ``field``."""

    method: Literal["random", "ordered", "field"] = "random"
    val: float = 0.1
    test: float = 0.0
    field: Optional[str] = None

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise OptionValueError("val and test must be fractions in [0, 1) whose sum is "
                                   f"below 1, got val={self.val}, test={self.test}", "val")
        if self.method == "field" and not self.field:
            raise OptionValueError("method 'field' needs 'field': the record key holding "
                                   "train/val/test", "method")


@attrs.define
class DataConfig:
    source: ComponentSpec
    cleaners: list[ComponentSpec] = attrs.field(factory=list)
    augmenters: list[ComponentSpec] = attrs.field(factory=list)
    split: SplitConfig = attrs.field(factory=SplitConfig)
    sampler: Literal["shuffle", "sequential", "balanced"] = "shuffle"
    label_field: str = "label"
    num_workers: int = 0
    on_error: Literal["drop", "fail"] = "drop"
    max_bad_fraction: float = 0.01
    shard_rows: int = 50_000


@attrs.define
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False


@attrs.define
class EarlyStoppingConfig:
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = 3
    min_delta: float = 0.0


@attrs.define
class CheckpointConfig:
    every_n_steps: int = 0
    keep_last: int = 2


@attrs.define
class TrainConfig:
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 32
    eval_batch_size: Optional[int] = None
    accumulate: int = 1
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    scheduler: Optional[ComponentSpec] = None
    clip_grad_norm: Optional[float] = None
    early_stopping: Optional[EarlyStoppingConfig] = None
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    log_every_n_steps: int = 20
    deterministic: bool = False
    compile: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    progress: Literal["auto", "bar", "log", "none"] = "auto"

    def __attrs_post_init__(self) -> None:
        for key in ("epochs", "batch_size", "accumulate"):
            if getattr(self, key) < 1:
                raise OptionValueError(f"{key} must be at least 1, got {getattr(self, key)}", key)


@attrs.define
class ExportConfig:
    formats: list[str] = attrs.field(factory=lambda: ["onnx"])
    quantize: Optional[Literal["int8", "int8-static"]] = None


@attrs.define
class PipelineConfig:
    """The whole pipeline file."""

    data: DataConfig
    model: ComponentSpec
    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    export: Optional[ExportConfig] = None


# --- structuring -----------------------------------------------------------------------


def make_converter(base_dir: Path | None = None) -> cattrs.Converter:
    """A strict converter: extra keys rejected; relative ``Path`` options resolved."""
    conv = cattrs.Converter(forbid_extra_keys=True)

    def structure_path(value: Any, _t: Any) -> Path:
        if not isinstance(value, (str, Path)):
            raise OptionValueError(f"expected a path string, got {value!r}")
        p = Path(value).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        return p

    conv.register_structure_hook(Path, structure_path)
    conv.register_unstructure_hook(Path, str)

    def structure_spec(value: Any, _t: Any) -> ComponentSpec:
        if isinstance(value, str):
            return ComponentSpec(value)
        if not isinstance(value, dict):
            raise OptionValueError("expected a component name or {name: ..., options: {...}}")
        extra = set(value) - {"name", "options"}
        if extra:
            raise OptionValueError(f"unknown keys {sorted(extra)}; component settings go "
                                   f"under 'options'")
        if "name" not in value:
            raise OptionValueError("missing 'name'")
        opts = value.get("options") or {}
        if not isinstance(opts, dict):
            raise OptionValueError("'options' must be a mapping")
        return ComponentSpec(str(value["name"]), dict(opts))

    conv.register_structure_hook(ComponentSpec, structure_spec)

    def structure_float(value: Any, _t: Any) -> float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise OptionValueError(f"expected a number, got {value!r}") from None

    def structure_int(value: Any, _t: Any) -> int:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        except (TypeError, ValueError):
            raise OptionValueError(f"expected an integer, got {value!r}") from None

    def structure_bool(value: Any, _t: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise OptionValueError(f"expected true or false, got {value!r}")

    def structure_str(value: Any, _t: Any) -> str:
        if isinstance(value, (dict, list)):
            raise OptionValueError(f"expected a string, got {type(value).__name__}")
        return str(value)

    def structure_literal(value: Any, t: Any) -> Any:
        allowed = get_args(t)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise OptionValueError(f"expected one of {', '.join(map(repr, allowed))}, "
                                   f"got {value!r}")
        return value

    def structure_list(value: Any, t: Any) -> list[Any]:
        # cattrs would iterate a string ("onnx" -> o, n, n, x): a list must be a list,
        # except that one path may stand for a list of paths (paths: data.jsonl).
        elem = (get_args(t) or (Any,))[0]
        if isinstance(value, (str, Path)) and elem is Path:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise OptionValueError(f"expected a list, got {value!r}")
        out, errors = [], []
        for i, item in enumerate(value):
            try:
                out.append(conv.structure(item, elem))
            except Exception as err:  # collected like cattrs does, with the index
                err.__notes__ = [*getattr(err, "__notes__", []),
                                 IterableValidationNote(f"Structuring {t} @ index {i}", i, elem)]
                errors.append(err)
        if errors:
            raise IterableValidationError(f"While structuring {t!r}", errors, t)
        return out

    conv.register_structure_hook(float, structure_float)
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(bool, structure_bool)
    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook_func(lambda t: get_origin(t) is Literal, structure_literal)
    conv.register_structure_hook_func(lambda t: t is list or get_origin(t) is list, structure_list)
    return conv


_AT = re.compile(r"^(?P<msg>.*?) @ \$(?P<path>.*)$")


def _to_dotted(path: str) -> str:
    path = path.lstrip(".")
    return re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path).strip(".")


def structure(conv: cattrs.Converter, data: Any, cls: type, *, prefix: str = "",
              lines: dict[str, int] | None = None, file: str | None = None) -> Any:
    """Structure ``data`` into ``cls``; the first problem becomes a :class:`ConfigError`."""
    try:
        return conv.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as err:
        fields: list[str | None] = []  # the option each message is about, if known

        def describe(exc: BaseException, type_: Any) -> str:
            if isinstance(exc, cattrs.ForbiddenExtraKeysError):
                fields.append(sorted(exc.extra_fields)[0])  # its line is the one to show
                return _unknown_keys(exc)
            fields.append(getattr(exc, "field", None))
            if isinstance(exc, OptionValueError) or (isinstance(exc, ValueError) and type_ is None):
                return str(exc)  # our hooks and the Options' validators speak to the user
            return cattrs.v.format_exception(exc, type_)

        if isinstance(err, cattrs.BaseValidationError):
            messages = cattrs.transform_error(err, path="$", format_exception=describe)
        else:
            messages = [f"{describe(err, None)} @ $"]
        first = messages[0]
        m = _AT.match(first)
        msg, path = (m.group("msg"), _to_dotted(m.group("path"))) if m else (first, "")
        full = ".".join(p for p in (prefix, path, fields[0] if fields else None) if p)
        msg = _friendly(msg, err)
        raise ConfigError(msg, path=full or None, file=file,
                          line=_line_for(lines, full)) from err


def _unknown_keys(exc: cattrs.ForbiddenExtraKeysError) -> str:
    known = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
    parts = []
    for key in sorted(exc.extra_fields):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"unknown key(s) {', '.join(parts)}; remove or fix the spelling "
            f"(known: {', '.join(known) or 'none'})")


def _friendly(msg: str, err: BaseException) -> str:
    if msg.startswith("required field missing"):
        return "required key is missing"
    if msg.startswith("invalid value for type, expected"):
        return msg.replace("invalid value for type, expected", "wrong type: expected")
    return msg


def _line_for(lines: dict[str, int] | None, path: str) -> int | None:
    if not lines:
        return None
    parts = path.split(".") if path else []
    while parts:
        key = ".".join(parts)
        if key in lines:
            return lines[key]
        parts.pop()
    return None


# --- reading files ----------------------------------------------------------------------


def _yaml_with_lines(text: str, file: str) -> tuple[Any, dict[str, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from err
    lines: dict[str, int] = {}

    def walk(n: Any, path: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{path}.{k.value}" if path else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                key = f"{path}.{i}"
                lines[key] = v.start_mark.line + 1
                walk(v, key)

    if node is not None:
        walk(node, "")
    data = yaml.safe_load(text)
    return data, lines


def read_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a pipeline file into a plain dict and a map key path -> line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("pipeline file not found; check the path", file=str(path))
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            raise ConfigError("TOML pipeline files need Python 3.11+; use YAML", file=str(p))
        try:
            data, lines = tomllib.loads(text), {}
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"invalid TOML: {err}", file=str(p)) from err
    else:
        data, lines = _yaml_with_lines(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError("a pipeline file must be a mapping at the top level", file=str(p))
    return data, lines


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = [p for p in re.split(r"\.|\[(\d+)\]", key) if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            node = _child(node, part, create=[] if nxt.isdigit() else {}, key=key)
        last = parts[-1]
        if isinstance(node, list):
            idx = int(last)
            if idx >= len(node):
                raise ConfigError(f"index {idx} is out of range", path=key)
            node[idx] = value
        else:
            node[last] = value
    return data


def _child(node: Any, part: str, *, create: Any, key: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"no list item {part!r}", path=key)
        return node[int(part)]
    if not isinstance(node, dict):
        raise ConfigError("cannot set a key inside a non-mapping value", path=key)
    if node.get(part) is None:
        node[part] = create
    return node[part]


@attrs.define
class LoadedConfig:
    """A validated pipeline: the config, the options objects of its components, and where it came from."""

    config: PipelineConfig
    raw: dict[str, Any]
    file: str | None
    base_dir: Path
    options: dict[str, Any] = attrs.field(factory=dict)  # key path -> structured Options
    lines: dict[str, int] = attrs.field(factory=dict)

    def component_specs(self) -> list[tuple[str, str, ComponentSpec]]:
        """(kind, key path, spec) for every component the pipeline names."""
        c = self.config
        out = [("source", "data.source", c.data.source)]
        out += [("cleaner", f"data.cleaners.{i}", s) for i, s in enumerate(c.data.cleaners)]
        out += [("augmenter", f"data.augmenters.{i}", s) for i, s in enumerate(c.data.augmenters)]
        out.append(("model", "model", c.model))
        if c.train.scheduler is not None:
            out.append(("scheduler", "train.scheduler", c.train.scheduler))
        if c.export is not None:
            out += [("exporter", f"export.formats.{i}", ComponentSpec(f))
                    for i, f in enumerate(c.export.formats) if f != "all"]
        return out

    def instantiate(self, catalog: Catalog, key_path: str) -> Any:
        """Create the component at ``key_path`` with its validated options."""
        for kind, path, spec in self.component_specs():
            if path == key_path:
                entry = catalog.get(kind, spec.name, key_path=path)
                return entry.cls(self.options[path])
        raise KeyError(key_path)

    def resolved(self) -> dict[str, Any]:
        """The config as plain data, with defaults filled in (saved in the run folder)."""
        conv = make_converter(self.base_dir)
        out = conv.unstructure(self.config)
        for kind, path, _spec in self.component_specs():
            if kind == "exporter":
                continue
            opts = conv.unstructure(self.options[path]) if path in self.options else {}
            node = out
            parts = path.split(".")
            for part in parts:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node["options"] = opts
        return out

    def config_hash(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def load_config(path: str | Path | None = None, *, data: dict[str, Any] | None = None,
                overrides: list[str] = (), catalog: Catalog | None = None,
                base_dir: str | Path | None = None) -> LoadedConfig:
    """Load, override and validate a pipeline (from a file or a dict).

    With a ``catalog``, component names are resolved and their options validated too.
    """
    lines: dict[str, int] = {}
    file = str(path) if path is not None else None
    if path is not None:
        data, lines = read_raw(path)
        base = Path(path).resolve().parent
    else:
        if data is None:
            raise PrivetError("load_config needs a path or data")
        base = Path(base_dir or ".").resolve()
    if base_dir is not None:
        base = Path(base_dir).resolve()
    data = apply_overrides(data, list(overrides))
    conv = make_converter(base)
    config = structure(conv, data, PipelineConfig, lines=lines, file=file)
    loaded = LoadedConfig(config=config, raw=data, file=file, base_dir=base, lines=lines)
    if catalog is not None:
        validate_components(loaded, catalog)
    return loaded


def validate_components(loaded: LoadedConfig, catalog: Catalog) -> None:
    """Resolve every component name and structure its options into its Options class."""
    conv = make_converter(loaded.base_dir)
    for kind, path, spec in loaded.component_specs():
        name_path = path if kind == "exporter" else f"{path}.name"
        try:
            entry = catalog.get(kind, spec.name, key_path=name_path)
        except ConfigError as err:
            raise type(err)(err.message, path=name_path, file=loaded.file,
                            line=_line_for(loaded.lines, name_path)) from None
        if kind == "exporter":
            continue
        loaded.options[path] = structure(conv, spec.options, entry.cls.Options,
                                         prefix=f"{path}.options", lines=loaded.lines,
                                         file=loaded.file)
