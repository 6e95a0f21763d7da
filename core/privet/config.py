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
from .validators import OptionValueError, at_least, non_negative, probability

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog


#: A run name becomes a folder under ``runs_dir``: it must stay a single plain name there.
MAX_RUN_NAME = 100


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run folder, or ``None`` when it can."""
    if not name.strip():
        return "a run name cannot be empty"
    if len(name) > MAX_RUN_NAME:
        return f"a run name has at most {MAX_RUN_NAME} characters, got {len(name)}"
    if "/" in name or "\\" in name or ".." in name:
        return (f"a run name is a plain folder name (no '/', '\\' or '..'), got {name!r}; "
                f"set runs_dir to choose where runs go")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"a run name cannot hold control characters, got {name!r}"
    return None


def _plain_run_name(_instance: Any, attribute: Any, value: str) -> None:
    problem = run_name_problem(value)
    if problem is not None:
        raise OptionValueError(problem, attribute.name)


def _seed_range(_instance: Any, attribute: Any, value: int) -> None:
    if not 0 <= value < 2**63:  # numpy's and torch's generators both take this range
        raise OptionValueError(f"seed must be between 0 and 2**63-1, got {value}", attribute.name)


def _finite_non_negative(_instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and not 0 <= value < float("inf"):
        raise OptionValueError(f"{attribute.name} must be a finite number, 0 or more (0 or "
                               f"unset: no clipping), got {value}", attribute.name)


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


def _local_folder(_instance: Any, attribute: Any, value: Optional[Path]) -> None:
    from .objectstore import is_remote

    if value is not None and is_remote(value):
        raise OptionValueError("the prepared cache is memory-mapped: give a local folder "
                               "(fast local disk), not an s3:// URL", attribute.name)


@attrs.define
class CacheConfig:
    """Retention of the prepared cache: ``keep: false`` deletes it when the run ends."""

    keep: bool = True


@attrs.define
class DataConfig:
    source: ComponentSpec
    cleaners: list[ComponentSpec] = attrs.field(factory=list)
    augmenters: list[ComponentSpec] = attrs.field(factory=list)
    split: SplitConfig = attrs.field(factory=SplitConfig)
    sampler: Literal["shuffle", "sequential", "balanced"] = "shuffle"
    label_field: str = "label"
    num_workers: int = attrs.field(default=0, validator=non_negative)
    on_error: Literal["drop", "fail"] = "drop"
    max_bad_fraction: float = attrs.field(default=0.01, validator=probability)
    shard_rows: int = attrs.field(default=50_000, validator=at_least(1))
    #: Processes that read and clean source shards during preparation. ``None``: the
    #: usable cores (``os.sched_getaffinity``), for data of 8 MB or more; a number is
    #: always used. The cache is the same whatever the number (docs/preparation.md).
    prepare_workers: Optional[int] = attrs.field(default=None, validator=at_least(1))
    cache: CacheConfig = attrs.field(factory=CacheConfig)
    #: Local folder for the prepared cache (fast local disk while data and runs are remote);
    #: default: ``runs_dir/.cache``, or the staging folder when ``runs_dir`` is ``s3://``.
    cache_dir: Optional[Path] = attrs.field(default=None, validator=_local_folder)


@attrs.define
class OptimizerConfig:
    """``train.optimizer``: a registered optimizer, the learning rate, and that optimizer's
    own options as sibling keys (``{name: adamw, lr: 0.003, weight_decay: 0.01}``).

    The options are validated against the optimizer component's ``Options`` once the
    catalog is known (:func:`validate_components`), like any component's.
    """

    name: str = "adamw"
    #: ``None``: the model's ``default_lr()``, else 1e-3 (resolved when training starts).
    lr: Optional[float] = None
    options: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.lr is not None and not 0 <= self.lr < float("inf"):
            raise OptionValueError(f"lr must be a finite number, 0 or more, got {self.lr}", "lr")


def _register_optimizer_hooks(conv: cattrs.Converter) -> None:
    """``train.optimizer`` is flat: every key besides ``name`` and ``lr`` is an option."""

    def structure(value: Any, _t: Any) -> OptimizerConfig:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise OptionValueError("expected an optimizer name or {name: ..., lr: ..., OPTION: ...}")
        rest = dict(value)
        name = conv.structure(rest.pop("name", "adamw"), str)
        lr = rest.pop("lr", None)
        try:
            lr = None if lr is None else conv.structure(lr, float)
        except OptionValueError as err:
            raise OptionValueError(str(err), "lr") from None
        nested = rest.pop("options", None) or {}  # the {name, options} form of other components
        if not isinstance(nested, dict):
            raise OptionValueError("'options' must be a mapping", "options")
        return OptimizerConfig(name, lr, {**nested, **rest})

    conv.register_structure_hook(OptimizerConfig, structure)
    conv.register_unstructure_hook(
        OptimizerConfig, lambda o: {"name": o.name, "lr": o.lr, **conv.unstructure(o.options)})


@attrs.define
class PrivacyConfig:
    """``privacy``: a registered privacy mechanism and its options as sibling keys
    (``{mechanism: dp-sgd, target_epsilon: 8, delta: 1e-5}``), validated against the
    mechanism component's ``Options`` like any component's. The plugin that registered
    the mechanism applies it (in its ``wrap_training``); the core only selects it."""

    mechanism: str
    options: dict[str, Any] = attrs.field(factory=dict)


def _register_privacy_hooks(conv: cattrs.Converter) -> None:
    """``privacy`` is flat: every key besides ``mechanism`` is an option."""

    def structure(value: Any, _t: Any) -> PrivacyConfig:
        if isinstance(value, str):
            value = {"mechanism": value}
        if not isinstance(value, dict):
            raise OptionValueError("expected {mechanism: NAME, OPTION: ...}")
        rest = dict(value)
        if "mechanism" not in rest:
            raise OptionValueError("'mechanism' is required (the name of a privacy mechanism, "
                                   "e.g. dp-sgd from privet-dp)", "mechanism")
        return PrivacyConfig(conv.structure(rest.pop("mechanism"), str), rest)

    conv.register_structure_hook(PrivacyConfig, structure)
    conv.register_unstructure_hook(
        PrivacyConfig, lambda p: {"mechanism": p.mechanism, **conv.unstructure(p.options)})


#: named in the error for an unknown ``privacy.mechanism`` while they are not installed
PRIVACY_HINTS = {"dp-sgd": "pip install privet-dp"}


@attrs.define
class EarlyStoppingConfig:
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = attrs.field(default=3, validator=at_least(1))
    min_delta: float = attrs.field(default=0.0, validator=non_negative)


@attrs.define
class CheckpointConfig:
    every_n_steps: int = attrs.field(default=0, validator=non_negative)  # 0: at epoch ends only
    keep_last: int = attrs.field(default=2, validator=at_least(1))


@attrs.define
class TrainConfig:
    # A value that passes here and then damages a run (reversed gradients from a negative
    # clip norm, a ZeroDivisionError at log time) is refused with its key and line.
    epochs: int = attrs.field(default=1, validator=at_least(1))
    max_steps: int = attrs.field(default=0, validator=non_negative)  # 0: no limit
    batch_size: int = attrs.field(default=32, validator=at_least(1))
    eval_batch_size: Optional[int] = attrs.field(default=None, validator=at_least(1))
    accumulate: int = attrs.field(default=1, validator=at_least(1))
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    scheduler: Optional[ComponentSpec] = None
    clip_grad_norm: Optional[float] = attrs.field(default=None, validator=_finite_non_negative)
    early_stopping: Optional[EarlyStoppingConfig] = None
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    log_every_n_steps: int = attrs.field(default=20, validator=at_least(1))
    deterministic: bool = False
    compile: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    progress: Literal["auto", "bar", "log", "none"] = "auto"


@attrs.define
class ExportConfig:
    formats: list[str] = attrs.field(factory=lambda: ["onnx"])
    quantize: Optional[Literal["int8", "int8-static"]] = None


def _key_reference(_instance: Any, attribute: Any, value: str) -> None:
    provider, sep, arg = str(value).partition(":")
    if not sep or not provider or not arg:
        raise OptionValueError("a key reference is PROVIDER:ARGUMENT (env:NAME, file:PATH, "
                               "command:...), never the key itself", attribute.name)


@attrs.define
class EncryptionConfig:
    """Encryption at rest: where the key comes from (a reference, never the key)."""

    key: str = attrs.field(validator=_key_reference)


@attrs.define
class SecurityConfig:
    encryption: Optional[EncryptionConfig] = None


def _endpoint_url(_instance: Any, attribute: Any, value: Optional[str]) -> None:
    from .objectstore import check_endpoint

    problem = check_endpoint(value) if value is not None else None
    if problem:
        raise OptionValueError(problem, attribute.name)


@attrs.define
class StorageConfig:
    """``storage:``: how to reach an S3-compatible store (Ceph RGW, MinIO, AWS). No
    credentials here: they come from the AWS_* variables or an AWS profile."""

    endpoint: Optional[str] = attrs.field(default=None, validator=_endpoint_url)
    region: Optional[str] = None
    addressing: Optional[Literal["path", "virtual"]] = None
    retries: int = attrs.field(default=4, validator=non_negative)
    backoff_s: float = attrs.field(default=0.5, validator=non_negative)


@attrs.define
class PipelineConfig:
    """The whole pipeline file."""

    data: DataConfig
    model: ComponentSpec
    name: str = attrs.field(default="run", validator=_plain_run_name)
    seed: int = attrs.field(default=0, validator=_seed_range)
    runs_dir: str = "runs"
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    export: Optional[ExportConfig] = None
    security: SecurityConfig = attrs.field(factory=SecurityConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    privacy: Optional[PrivacyConfig] = None


# --- structuring -----------------------------------------------------------------------


def make_converter(base_dir: Path | None = None) -> cattrs.Converter:
    """A strict converter: extra keys rejected; relative ``Path`` options resolved.

    Every hook raises :class:`OptionValueError` with a message written for users; the
    caller turns the first one into a ``ConfigError`` naming the key path and line.
    """
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(Path, _path_hook(base_dir))
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook(ComponentSpec, _structure_spec)
    _register_optimizer_hooks(conv)
    _register_privacy_hooks(conv)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook_func(lambda t: get_origin(t) is Literal, _structure_literal)
    conv.register_structure_hook_func(lambda t: t is list or get_origin(t) is list, _list_hook(conv))
    return conv


def _path_hook(base_dir: Path | None) -> Any:
    def structure_path(value: Any, _t: Any) -> Path:
        if not isinstance(value, (str, Path)):
            raise OptionValueError(f"expected a path string, got {value!r}")
        if str(value).startswith("s3:/"):  # an object store URL: never joined to a folder
            return Path(value)
        p = Path(value).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        return p

    return structure_path


def _structure_spec(value: Any, _t: Any) -> ComponentSpec:
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


def _structure_float(value: Any, _t: Any) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"expected a number, got {value!r}") from None


def _structure_int(value: Any, _t: Any) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"expected an integer, got {value!r}") from None


def _structure_bool(value: Any, _t: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise OptionValueError(f"expected true or false, got {value!r}")


def _structure_str(value: Any, _t: Any) -> str:
    if isinstance(value, (dict, list)):
        raise OptionValueError(f"expected a string, got {type(value).__name__}")
    return str(value)


def _structure_literal(value: Any, t: Any) -> Any:
    allowed = get_args(t)
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        raise OptionValueError(f"expected one of {', '.join(map(repr, allowed))}, "
                               f"got {value!r}")
    return value


def _list_hook(conv: cattrs.Converter) -> Any:
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

    return structure_list


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


#: A pipeline file is a page of settings: anything larger is a mistake or an attack.
MAX_FILE_BYTES = 1 << 20
#: Values a YAML document may hold once its aliases are expanded. Anchors and aliases stay
#: allowed (sharing a block of options is handy), but a "billion laughs" alias bomb, a few
#: hundred bytes that expand to billions of values, is refused before anything walks it.
MAX_YAML_VALUES = 10_000
#: How deeply mappings and lists may nest (a real pipeline file uses about six levels).
MAX_YAML_DEPTH = 50


def _read_text(p: Path) -> str:
    """The file as text, refusing what is too big, binary or not UTF-8 (one line each)."""
    try:
        with p.open("rb") as fh:
            blob = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read the pipeline file: {err.strerror or err}",
                          file=str(p)) from None
    if len(blob) > MAX_FILE_BYTES:
        raise ConfigError(f"the pipeline file is larger than {MAX_FILE_BYTES / (1 << 20):g} MiB; it "
                          f"holds settings, not data (point a source at the data)", file=str(p))
    if b"\0" in blob:
        raise ConfigError("the pipeline file is binary (it holds NUL bytes), not a YAML or "
                          "TOML text file", file=str(p), line=blob[:blob.index(b"\0")].count(b"\n") + 1)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"the pipeline file is not UTF-8 text (byte 0x{blob[err.start]:02x} at "
                          f"offset {err.start}); save it as UTF-8", file=str(p),
                          line=blob[:err.start].count(b"\n") + 1) from None
    return text.removeprefix("\ufeff")


def _yaml_error(err: yaml.YAMLError, file: str | None) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return ConfigError(f"invalid YAML: {problem}", file=file, line=line)


def _check_expansion(root: yaml.Node, file: str | None) -> None:
    """Refuse a document whose aliases expand beyond the budget, refer to themselves or nest
    too deeply; shared nodes are counted once per use, in time linear in the node graph."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to the value it is inside (a recursive "
                              "anchor); write the value out", file=file, line=line)
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"YAML nested more than {MAX_YAML_DEPTH} levels deep",
                              file=file, line=line)
        open_nodes.add(key)
        total = 1
        children: list[Any] = (node.value if isinstance(node, yaml.SequenceNode) else
                               [c for kv in node.value for c in kv]
                               if isinstance(node, yaml.MappingNode) else [])
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_VALUES:
                raise ConfigError(f"YAML aliases expand this file to more than "
                                  f"{MAX_YAML_VALUES} values (an alias bomb?); write the "
                                  f"repeated settings out", file=file, line=line)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _load_yaml(text: str, file: str | None) -> tuple[Any, yaml.Node | None]:
    """Parse YAML safely (no tags that build objects), bounded in memory: data and its node."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, file)
        return loader.construct_document(node), node
    except yaml.YAMLError as err:
        raise _yaml_error(err, file) from None
    except RecursionError:
        raise ConfigError(f"YAML nested more than {MAX_YAML_DEPTH} levels deep",
                          file=file) from None
    finally:
        loader.dispose()


def _yaml_with_lines(text: str, file: str) -> tuple[Any, dict[str, int]]:
    data, node = _load_yaml(text, file)
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
    return data, lines


def parse_yaml_text(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """YAML text already read (e.g. through the storage module) and its key -> line map,
    with the same safety limits as a pipeline file."""
    return _yaml_with_lines(text, file)


_TOML_AT = re.compile(r"\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$")


def _load_toml(text: str, file: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        raise ConfigError("TOML pipeline files need Python 3.11+; use YAML", file=file) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = str(err).splitlines()[0] if str(err) else "syntax error"
        m = _TOML_AT.search(msg)
        line = int(m.group("line")) if m else getattr(err, "lineno", None)
        if m:
            msg = f"{msg[:m.start()]} (column {m.group('col')})"
        raise ConfigError(f"invalid TOML: {msg}", file=file, line=line) from None
    except RecursionError:
        raise ConfigError("TOML nested too deeply", file=file) from None


def read_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a pipeline file into a plain dict and a map key path -> line.

    Files over :data:`MAX_FILE_BYTES`, binary or non-UTF-8 files, and YAML whose aliases
    expand past :data:`MAX_YAML_VALUES` are refused with one :class:`ConfigError` line.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a folder, not a pipeline file", file=str(path))
    if not p.is_file():
        raise ConfigError("pipeline file not found; check the path", file=str(path))
    text = _read_text(p)
    if p.suffix == ".toml":
        data, lines = _load_toml(text, str(p)), {}
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
            value = _load_yaml(raw, None)[0] if raw.strip() else ""
        except ConfigError as err:
            if not err.message.startswith("invalid YAML"):  # an alias bomb, say
                raise ConfigError(f"override {item!r}: {err.message}", path=key) from None
            value = raw  # not YAML: the text as it is
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
        out.append(("optimizer", "train.optimizer",
                    ComponentSpec(c.train.optimizer.name, c.train.optimizer.options)))
        if c.train.scheduler is not None:
            out.append(("scheduler", "train.scheduler", c.train.scheduler))
        if c.export is not None:
            out += [("exporter", f"export.formats.{i}", ComponentSpec(f))
                    for i, f in enumerate(c.export.formats) if f != "all"]
        if c.privacy is not None:
            out.append(("privacy", "privacy", ComponentSpec(c.privacy.mechanism, c.privacy.options)))
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
            if kind in ("optimizer", "privacy"):  # flat: options sit next to the name
                node.update(opts)
            else:
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
        name_path = {"exporter": path, "privacy": "privacy.mechanism"}.get(kind, f"{path}.name")
        try:
            entry = catalog.get(kind, spec.name, key_path=name_path)
        except ConfigError as err:
            message = err.message
            if kind == "privacy":
                message = message.replace("unknown privacy ", "unknown privacy mechanism ", 1)
                missing = [m for m in PRIVACY_HINTS if m not in catalog.names("privacy")]
                message += "".join(f"; {m}: {PRIVACY_HINTS[m]}" for m in missing)
            raise type(err)(message, path=name_path, file=loaded.file,
                            line=_line_for(loaded.lines, name_path)) from None
        if kind == "exporter":
            continue
        flat = kind in ("optimizer", "privacy")
        loaded.options[path] = structure(conv, spec.options, entry.cls.Options,
                                         prefix=path if flat else f"{path}.options",
                                         lines=loaded.lines, file=loaded.file)
    from .train.optim import check_monitor, resolve_lr  # lazily: parsing a file needs no train/

    scheduler = (loaded.instantiate(catalog, "train.scheduler")
                 if loaded.config.train.scheduler is not None else None)
    model = loaded.instantiate(catalog, "model")
    check_monitor(loaded, model, scheduler)
    # the resolved config (config.yaml, config hash) records the learning rate trained with
    optimizer = loaded.config.train.optimizer
    optimizer.lr = resolve_lr(optimizer, model.default_lr())
