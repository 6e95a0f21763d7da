"""Export bundles: ``RUN/export/`` with the artifacts, preprocessing files and ``bundle.json``.

:func:`export_run` (called by ``privet export`` and at the end of ``privet run`` when the
pipeline has an ``export:`` section) loads the trained model, exports it with each
requested exporter, verifies every artifact against the eager model, optionally adds
int8 copies, and writes the bundle atomically (a temp folder renamed into place).

:class:`Bundle` reads one back for ``privet predict``. A bundle is data someone else may
have made, so it is read as untrusted: ``bundle.json`` is validated field by field, every
file it names must stay inside the bundle folder (relative, no ``..``, no symlink out) and
match its checksum, components are rebuilt only from plugins already installed here (a
bundle records each one's distribution and version, and never names code to import), and
artifacts that are programs (TorchScript, ``torch.export``) run only when the caller trusts
the bundle's author (``trust_code``). Nothing in a bundle is a pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable, Iterator

from ..errors import ConfigError, ExportError, PrivetError
from ..storage import Storage
from .exporters import Runner, _first_line

BUNDLE_FORMAT = "privet-bundle"
#: Bumped when a reader of an older version could misread a newer bundle.
BUNDLE_VERSION = 1
BUILTIN_FORMATS = ("torch_export", "onnx", "torchscript")
QUANTIZE_MODES = {"int8": "dynamic", "int8-static": "static"}
#: Example inputs the artifacts are traced with, and the real validation batch (another
#: size, so the dynamic batch axis is exercised) they are checked on.
EXAMPLE_BATCH = 4
VERIFY_BATCH = 64
#: Validation examples used for the metrics before and after quantization.
EVAL_LIMIT = 2048
EVAL_BATCH = 256
#: Artifacts ``privet predict`` prefers, in order, when none is named.
PREFERRED = ("onnx", "torch_export", "onnx_int8", "torch_int8", "torchscript")
#: Loaders whose artifacts are programs: loading or running them can run arbitrary code
#: (TorchScript ops such as ``torch.from_file(shared=True)`` run in ``forward``; a ``.pt2``
#: archive can carry objects for the unpickler). They need ``trust_code``.
CODE_LOADERS = frozenset({"torch_export", "torchscript"})

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"privet: {message}", file=sys.stderr)


def sha256_of(path: str | Path, storage: Storage | None = None) -> str:
    """SHA-256 of a file: ``path`` relative to ``storage``, or a path (its folder's storage).

    A folder artifact (a Hugging Face model folder) hashes the sorted list of its files'
    relative names and digests, so a renamed, added, removed or edited file changes it.
    """
    if storage is None:
        path = Path(path)
        storage, path = Storage(path.parent), path.name
    if storage.path(str(path)).is_dir():
        lines = [f"{rel}\0{sha256_of(f'{path}/{rel}', storage)}\n"
                 for rel in _tree_files(storage.path(str(path)))]
        return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    return hashlib.sha256(storage.read_bytes(str(path))).hexdigest()


def _tree_files(folder: Path) -> list[str]:
    """Relative POSIX names of the files under ``folder``; a symlink inside is refused."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            raise ExportError(f"{p}: a symlink inside an artifact folder; refusing it")
        if p.is_file():
            out.append(p.relative_to(folder).as_posix())
    return out


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_dir():
        return sum((path / rel).stat().st_size for rel in _tree_files(path))
    return path.stat().st_size


def expand_formats(formats: Iterable[str] | str | None) -> list[str]:
    """Format names in order without repeats; ``all`` means the three built-in ones."""
    if formats is None:
        return ["onnx"]
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for f in formats:
        for name in (BUILTIN_FORMATS if f == "all" else (f,)):
            if name not in out:
                out.append(name)
    return out or ["onnx"]


# --- writing --------------------------------------------------------------------------


def export_run(run_dir: str | Path, *, host: Any | None = None,
               formats: Iterable[str] | str | None = ("onnx",), quantize: str | None = None,
               log: Log | None = _stderr, trained: tuple[Any, Any] | None = None,
               cleaners: list[Any] | None = None,
               config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export a trained run into ``RUN/export/`` and return the export report.

    ``formats`` names exporters (``torch_export``, ``onnx``, ``torchscript``, ``all`` or a
    plugin's); ``quantize`` is ``None``, ``int8`` (dynamic) or ``int8-static`` (calibrated
    on validation examples). Raises :class:`ExportError` if an artifact cannot be written
    or does not match the eager model; the bundle is still written, with the failure
    recorded in ``bundle.json`` (``privet predict`` refuses such artifacts).

    Right after training the engine passes what it holds in memory: ``trained`` (the
    model component and its module), the fitted ``cleaners`` and the resolved ``config``
    (as saved in ``config.yaml``); whatever is not given is read from the run folder.
    """
    started = time.perf_counter()
    say = log or (lambda m: None)
    run_dir = Path(run_dir).resolve()
    formats = expand_formats(formats)
    _check_quantize(quantize, formats)
    if host is None:
        from ..plugins import load_plugins

        host = load_plugins(on_warning=lambda m: say(f"warning: {m}"))
    if config is None:
        from ..runs import load_run

        config = load_run(run_dir).config
    model, module, cleaners = _trained_objects(run_dir, host, trained, cleaners)
    storage = Storage(run_dir)
    if quantize and storage.cipher is not None:
        raise ExportError(f"{run_dir}: --quantize is not available for an encrypted run: the "
                          f"quantizers read and write model files on disk in plaintext")
    exporters = {f: host.catalog.get("exporter", f, key_path="export.formats") for f in formats}
    tables = _cached_examples(run_dir, storage)
    example = check = None
    eager_example: list[Any] = []
    eval_batches: list[Any] = []
    axes: dict[str, Any] = {}
    if not all(getattr(e.cls, "verifies_itself", False) for e in exporters.values()):
        example, check, eval_batches = _batches(model, tables, run_dir)
        eager_example = _eager(module, example.feed)
        axes = model.dynamic_axes()
    records = _validation_records(tables)
    notes: list[str] = []
    with storage.atomic_dir("export") as tmp:
        files = _write_preprocessing(model, tmp)
        artifacts, runners = _export_all(exporters, model, module, example, check, eager_example,
                                         axes, tmp, notes, say, records)
        quantization: dict[str, Any] = {}
        if quantize:
            from .verify import Evaluator

            evaluator = Evaluator(model, module, eval_batches)
            quantization = _quantize(quantize, model, module, evaluator, artifacts, runners,
                                     eval_batches, tmp, notes, say)
        storage.sub(tmp).seal_tree()  # encrypted run: artifacts are sealed before the rename
        bundle = _bundle_json(run_dir, config, host, model, cleaners, example, eager_example,
                              axes, files, artifacts, tmp)
        Storage(tmp).write_text("bundle.json", json.dumps(bundle, indent=2) + "\n")
    report = _export_report(run_dir, formats, quantize, artifacts, quantization, notes, started)
    if storage.cipher is not None:  # the key reference (never the key), for privet predict
        report["encryption"] = _key_reference(run_dir, config)
    Storage(run_dir / "export").write_json("report.json", report)
    _raise_for_failures(run_dir, artifacts)
    say(f"export: {', '.join(artifacts)} verified against the eager model -> {run_dir / 'export'}")
    return report


def _key_reference(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The run's key reference and the folder relative ``file:`` references start from."""
    from ..runs import load_run

    encryption = (config.get("security") or {}).get("encryption") or {}
    return {"key": encryption.get("key"), "base_dir": str(load_run(run_dir).base_dir)}


def _check_quantize(quantize: str | None, formats: list[str]) -> None:
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantization {quantize!r}; use int8 or int8-static",
                          path="export.quantize")
    if quantize and not {"onnx", "torch_export"} & set(formats):
        raise ConfigError(f"quantize: {quantize} applies to the onnx and torch_export formats; "
                          f"add one of them", path="export.formats")


def _trained_objects(run_dir: Path, host: Any, trained: tuple[Any, Any] | None,
                     cleaners: list[Any] | None) -> tuple[Any, Any, list[Any]]:
    """(model component, module on the CPU in eval mode, fitted cleaners)."""
    from ..train.loading import load_cleaners, load_trained

    model, module = trained if trained is not None else load_trained(run_dir, host)
    if cleaners is None:
        cleaners = load_cleaners(run_dir, host)
    return model, module.to("cpu").eval(), list(cleaners)


def _export_all(exporters: dict[str, Any], model: Any, module: Any, example: Any, check: Any,
                eager_example: list[Any], axes: Any, folder: Path, notes: list[str],
                say: Log, records: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Runner]]:
    artifacts: dict[str, dict[str, Any]] = {}
    runners: dict[str, Runner] = {}
    for name, entry in exporters.items():
        say(f"export: {name} ...")
        if getattr(entry.cls, "verifies_itself", False):
            info, runner = _export_self_verified(name, entry, model, module, records, folder), None
        else:
            info, runner = _export_one(name, entry, model, module, example, check, eager_example,
                                       axes, folder)
        artifacts[name] = info
        notes += [f"{name}: {n}" for n in info.get("notes", [])]
        if runner is not None:
            runners[name] = runner
    return artifacts, runners


def _export_report(run_dir: Path, formats: list[str], quantize: str | None,
                   artifacts: dict[str, Any], quantization: dict[str, Any], notes: list[str],
                   started: float) -> dict[str, Any]:
    keys = ("file", "size_bytes", "verified", "verification", "exporter", "dynamic", "error",
            "precision")
    return {
        "bundle": str(run_dir / "export"),
        "format_version": BUNDLE_VERSION,
        "formats": formats,
        "quantize": quantize,
        "tolerance": _tolerance(),
        "artifacts": {k: {x: v[x] for x in keys if x in v} for k, v in artifacts.items()},
        "quantization": quantization,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _raise_for_failures(run_dir: Path, artifacts: dict[str, Any]) -> None:
    """An fp32 artifact that failed verification fails the export (int8 ones: see notes)."""
    failed = {k: v for k, v in artifacts.items()
              if not v.get("verified") and v.get("precision") != "int8"}
    if failed:
        why = "; ".join(f"{k}: {v.get('error') or 'outputs differ from the eager model'}"
                        for k, v in failed.items())
        raise ExportError(f"export of {run_dir.name} failed for {', '.join(failed)} ({why}); "
                          f"details in {run_dir / 'export' / 'bundle.json'}")


def _tolerance() -> dict[str, float]:
    from .verify import TOLERANCE

    return dict(TOLERANCE)


def _cached_examples(run_dir: Path, storage: Any) -> dict[str, Any]:
    """The run's cached examples per split (an ArrowTable each), from the prepared cache."""
    from ..data.arrow import ArrowTable

    manifest = storage.read_json("manifest.json") if storage.exists("manifest.json") else {}
    candidates = [run_dir / "cache", Path(manifest["data_cache"])] if manifest.get("data_cache") \
        else [run_dir / "cache"]
    for root in candidates:
        if (root / "meta.json").exists():
            cache = Storage(root)
            meta = cache.read_json("meta.json")
            return {s: ArrowTable([str(cache.path(f)) for f in fs])
                    for s, fs in meta["example_files"].items()}
    raise ExportError(f"{run_dir}: the run's prepared data cache is gone ({candidates[-1]}); "
                      f"export traces and verifies the model on cached validation examples: "
                      f"re-run 'privet run' to prepare it")


def _batches(model: Any, tables: dict[str, Any], run_dir: Path) -> tuple[Any, Any, list[Any]]:
    """(example batch, verification batch, evaluation batches) from validation examples."""
    from .verify import encode_batch

    split = next((s for s in ("val", "test", "train") if s in tables and len(tables[s])), None)
    if split is None:
        raise ExportError(f"{run_dir}: the run has no cached examples to export with")
    table = tables[split]
    n = len(table)
    first = table.rows(list(range(min(n, VERIFY_BATCH))))
    example_records = first[:EXAMPLE_BATCH]
    if len(example_records) == 1:  # a batch of one would fix the batch axis to 1
        example_records = example_records * 2
    example = encode_batch(model, example_records)
    if example is None:
        raise ExportError(f"model {model.name!r} dropped every example it was given "
                          f"(encode raised DropRecord); cannot build example inputs")
    check = encode_batch(model, first) if len(first) != len(example.records) else None
    eval_batches = []
    limit = min(n, EVAL_LIMIT)
    for start in range(0, limit, EVAL_BATCH):
        b = encode_batch(model, table.rows(list(range(start, min(limit, start + EVAL_BATCH)))))
        if b is not None:
            eval_batches.append(b)
    return example, check, eval_batches


def _validation_records(tables: dict[str, Any]) -> list[Any]:
    """Up to ``VERIFY_BATCH`` cached examples of the first non-empty split of val, test, train."""
    split = next((s for s in ("val", "test", "train") if s in tables and len(tables[s])), None)
    if split is None:
        return []
    return tables[split].rows(list(range(min(len(tables[split]), VERIFY_BATCH))))


def _export_self_verified(name: str, entry: Any, model: Any, module: Any, records: list[Any],
                          folder: Path) -> dict[str, Any]:
    """Export with an exporter that checks its own artifact (``Exporter.verifies_itself``)."""
    exporter = entry.cls(entry.cls.Options())
    info: dict[str, Any] = {"exporter": name, "loader": name, "precision": "fp32"}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(exporter.export(module, (), folder, model.input_names(),
                                        model.output_names(), model=model, records=records))
    except PrivetError as err:
        return {**info, "verified": False, "error": str(err), "file": None, "size_bytes": 0}
    except Exception as err:
        return {**info, "verified": False, "file": None, "size_bytes": 0,
                "error": f"{type(err).__name__}: {_first_line(err)}"}
    if path.parent.resolve() != folder.resolve():
        raise ExportError(f"exporter {name!r} wrote {path} outside the bundle folder")
    details = dict(getattr(exporter, "details", {}))
    info.update(seconds=round(time.perf_counter() - t0, 3), notes=list(getattr(exporter, "notes", [])),
                dynamic=details.pop("dynamic", True), details=details, file=path.name,
                size_bytes=size_of(path), precision=details.pop("precision", "fp32"))
    verification = dict(getattr(exporter, "verification", {}))
    info["verification"] = verification
    checks = [v for v in verification.values() if isinstance(v, dict)]
    info["verified"] = bool(checks) and all(v.get("ok") for v in checks)
    if not info["verified"]:
        bad = next((v for v in checks if not v.get("ok")), {})
        info["error"] = bad.get("error") or (
            f"max |diff| {bad.get('max_abs_diff')} exceeds the tolerance {bad.get('tolerance')}"
            if bad else "the exporter reported no verification")
    return info


def _eager(module: Any, feed: dict[str, Any]) -> list[Any]:
    from .verify import eager_outputs

    return eager_outputs(module, feed)


def _write_preprocessing(model: Any, folder: Path) -> dict[str, dict[str, str]]:
    """model_state.json plus the model's own plain files, each with its checksum."""
    state = model.state_dict()
    try:
        text = json.dumps(state, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ExportError(f"model {model.name!r}: state_dict() is not JSON-serialisable ({err}); "
                          f"it must be plain data") from err
    out = Storage(folder)
    out.write_text("model_state.json", text)
    written = {"model_state": "model_state.json"}
    if out.cipher is None:
        written.update(_model_files(model, folder))
    else:  # the model writes plain files: let it write them in memory, then seal them
        with _scratch_in_memory() as scratch:
            for role, name in _model_files(model, scratch).items():
                out.write_bytes(name, (scratch / name).read_bytes())
                written[role] = name
    return {role: {"file": name, "sha256": sha256_of(name, out)} for role, name in written.items()}


def _model_files(model: Any, folder: Path) -> dict[str, str]:
    """``model.bundle_files(folder)``, checked: plain files written directly in ``folder``."""
    written: dict[str, str] = {}
    for role, name in (model.bundle_files(folder) or {}).items():
        if role == "model_state":
            raise ExportError(f"model {model.name!r}: bundle_files() uses the reserved role {role!r}")
        p = folder / name
        if not p.is_file() or p.parent != folder:
            raise ExportError(f"model {model.name!r}: bundle_files() listed {name!r}, which is not "
                              f"a file written directly in the bundle folder")
        if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".bin"):
            raise ExportError(f"model {model.name!r}: bundle file {name!r} looks like a pickle; "
                              f"write JSON or text (bundles hold no pickles)")
        written[role] = name
    return written


@contextlib.contextmanager
def _scratch_in_memory() -> Iterator[Path]:
    """An owner-only folder on a RAM-backed filesystem (``/dev/shm``), removed afterwards:
    where a model's plain preprocessing files (tokenizer, labels) of an encrypted run are
    written before they are sealed, so they never reach a disk. Refused where there is none."""
    shm = Path(os.environ.get("PRIVET_MEMORY_SCRATCH", "/dev/shm"))
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        raise ExportError(f"an encrypted export needs a RAM-backed folder for the model's "
                          f"preprocessing files and {shm} is not writable; set "
                          f"PRIVET_MEMORY_SCRATCH to a tmpfs folder")
    folder = Path(tempfile.mkdtemp(prefix="privet-seal-", dir=shm))  # mkdtemp: mode 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _call_export(exporter: Any, module: Any, example_inputs: tuple[Any, ...], folder: Path,
                 input_names: list[str], output_names: list[str], axes: Any) -> Path:
    params = inspect.signature(exporter.export).parameters
    kwargs = {}
    if "dynamic_axes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["dynamic_axes"] = axes
    return Path(exporter.export(module, example_inputs, folder, input_names, output_names, **kwargs))


def _export_sealed(name: str, exporter: Any, module: Any, inputs: tuple[Any, ...], folder: Path,
                   model: Any, axes: Any) -> tuple[Path, Runner]:
    """Export to bytes, seal them into ``folder`` and load the runner from the same bytes:
    no plaintext artifact touches the disk. Exporters without ``export_bytes`` are refused."""
    if not (hasattr(exporter, "export_bytes") and hasattr(exporter, "load_bytes")):
        raise ExportError(f"exporter {name!r} writes its artifact to disk, which an encrypted "
                          f"run does not allow (it would be plaintext); use onnx, torch_export "
                          f"or torchscript, or give the exporter export_bytes/load_bytes")
    data = exporter.export_bytes(module, inputs, model.input_names(), model.output_names(),
                                 dynamic_axes=axes)
    filename = f"model{exporter.suffix}"
    path = Storage(folder).write_bytes(filename, data)
    return path, exporter.load_bytes(data, path)


def _export_one(name: str, entry: Any, model: Any, module: Any, example: Any, check: Any,
                eager_example: list[Any], axes: Any, folder: Path) -> tuple[dict[str, Any], Runner | None]:
    """Export with one exporter, load the artifact back and compare it with eager."""
    import torch

    from .verify import compare

    exporter = entry.cls(entry.cls.Options())
    inputs = tuple(torch.as_tensor(v) for v in example.feed.values())
    info: dict[str, Any] = {"exporter": name, "loader": name, "precision": "fp32"}
    t0 = time.perf_counter()
    sealed = Storage(folder).cipher is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sealed:  # an encrypted run: the artifact exists in plaintext only in memory
                path, runner = _export_sealed(name, exporter, module, inputs, folder, model, axes)
            else:
                path = _call_export(exporter, module, inputs, folder, model.input_names(),
                                    model.output_names(), axes)
                runner = exporter.load(path)
    except PrivetError as err:
        return {**info, "verified": False, "error": str(err), "file": None, "size_bytes": 0}, None
    except Exception as err:
        return {**info, "verified": False, "file": None, "size_bytes": 0,
                "error": f"{type(err).__name__}: {_first_line(err)}"}, None
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["notes"] = list(getattr(exporter, "notes", []))
    details = dict(getattr(exporter, "details", {}))
    info["dynamic"] = details.pop("dynamic", True)
    info["details"] = details
    if path.parent.resolve() != folder.resolve():
        raise ExportError(f"exporter {name!r} wrote {path} outside the bundle folder")
    info["file"] = path.name
    info["size_bytes"] = path.stat().st_size
    info["example_batch"] = len(example.records)  # the only batch size a static artifact takes
    verification: dict[str, Any] = {}
    try:
        verification["example_inputs"] = {"batch": len(example.records),
                                          **compare(eager_example, runner(example.feed))}
        if check is not None and info["dynamic"]:
            verification["validation"] = {"batch": len(check.records),
                                          **compare(_eager(module, check.feed), runner(check.feed))}
    except Exception as err:
        verification["error"] = f"running the artifact failed: {type(err).__name__}: {_first_line(err)}"
    info["verification"] = verification
    info["verified"] = "error" not in verification and all(
        v.get("ok") for v in verification.values() if isinstance(v, dict))
    if not info["verified"]:
        bad = next((v for v in verification.values() if isinstance(v, dict) and not v.get("ok")), {})
        info["error"] = verification.get("error") or bad.get("error") or (
            f"max |diff| {bad.get('max_abs_diff')} exceeds the tolerance {_tolerance()}")
    return info, runner


def _quantize(mode: str, model: Any, module: Any, evaluator: Any, artifacts: dict[str, Any],
              runners: dict[str, Runner], eval_batches: list[Any], folder: Path,
              notes: list[str], say: Log) -> dict[str, Any]:
    """int8 copies of the ONNX and torch_export artifacts, with size and metrics before/after."""
    from .quantize import (INSTALL_INT8, TORCHAO_SCHEME, load_torchao, quantize_onnx,
                           quantize_torchao, torchao_available)

    eager_metrics = evaluator.metrics()
    out: dict[str, Any] = {"mode": QUANTIZE_MODES[mode], "validation_examples": evaluator.count,
                           "eager_metrics": eager_metrics}
    onnx = artifacts.get("onnx")
    if onnx and onnx.get("verified"):
        say(f"export: onnx int8 ({QUANTIZE_MODES[mode]}) ...")
        dst = folder / "model.int8.onnx"
        calibration = [b.feed for b in eval_batches][:16]
        notes += [f"onnx_int8: {n}" for n in quantize_onnx(folder / onnx["file"], dst,
                                                            mode=QUANTIZE_MODES[mode],
                                                            calibration=calibration)]
        from .exporters import onnx_runner

        runner = onnx_runner(dst)
        artifacts["onnx_int8"] = _quantized_entry("onnx_int8", "onnx", dst, onnx, runner,
                                                  evaluator, runners.get("onnx"),
                                                  {"library": "onnxruntime", "mode": QUANTIZE_MODES[mode]})
        out["onnx_int8"] = artifacts["onnx_int8"]["quantization"]
        notes += [f"onnx_int8: {n}" for n in artifacts["onnx_int8"]["notes"]]
    elif onnx:
        notes.append("onnx_int8: skipped, the fp32 ONNX artifact failed")
    pt = artifacts.get("torch_export")
    if pt and pt.get("verified"):
        if torchao_available():
            say("export: torch int8 (torchao) ...")
            dst = folder / "model.int8.safetensors"
            quantize_torchao(module, dst)
            runner = load_torchao(model.build(), dst)
            artifacts["torch_int8"] = _quantized_entry(
                "torch_int8", "torchao", dst, pt, runner, evaluator, runners.get("torch_export"),
                {"library": "torchao", "scheme": TORCHAO_SCHEME})
            if mode == "int8-static":
                notes.append("torch_int8: torchao has no static int8 scheme for CPUs; used "
                             f"{TORCHAO_SCHEME}")
            out["torch_int8"] = artifacts["torch_int8"]["quantization"]
            notes += [f"torch_int8: {n}" for n in artifacts["torch_int8"]["notes"]]
        else:
            notes.append(f"torch_int8: skipped, torchao is not installed ({INSTALL_INT8}); "
                         "torch.ao.quantization is deprecated upstream")
    return out


def _quantized_entry(key: str, loader: str, path: Path, base: dict[str, Any], runner: Runner,
                     evaluator: Any, base_runner: Runner | None, how: dict[str, Any]) -> dict[str, Any]:
    """An int8 artifact's entry; verified only if its metrics or agreement were measured."""
    size = path.stat().st_size
    metrics_before = evaluator.metrics(base_runner) if base_runner is not None else evaluator.metrics()
    metrics_after = evaluator.metrics(runner)
    agreement = evaluator.agreement(runner)
    quant = {**how, "file": path.name, "size_bytes": size, "fp32_file": base["file"],
             "fp32_size_bytes": base["size_bytes"],
             "size_ratio": round(size / base["size_bytes"], 4) if base["size_bytes"] else None,
             "metrics_before": metrics_before, "metrics_after": metrics_after,
             "agreement": agreement}
    measured = _measured(metrics_after) or "max_abs_diff" in agreement
    entry = {"exporter": base["exporter"], "loader": loader, "precision": "int8", "file": path.name,
             "size_bytes": size, "dynamic": base.get("dynamic", True), "verified": measured,
             "verification": {"note": "int8 outputs are compared by validation metrics and "
                                      "agreement with the eager model, not elementwise",
                              "agreement": agreement, "metrics_after": metrics_after},
             "quantization": quant, "notes": []}
    if not measured:
        why = metrics_after.get("note") or "the model gives no predictions to compare on validation"
        entry["error"] = (f"not verified: neither validation metrics nor agreement with the eager "
                          f"model could be measured ({why})")
        entry["notes"] = [f"{entry['error']}; privet predict refuses this artifact"]
    return entry


def _measured(metrics: dict[str, Any]) -> bool:
    """Whether ``metrics`` holds at least one measured number (not just a note)."""
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())


def _io_spec(names: list[str], arrays: list[Any], axes: dict[str, dict[int, str]]) -> list[dict[str, Any]]:
    out = []
    for i, a in enumerate(arrays):
        name = names[i] if i < len(names) else f"output_{i}"
        dyn = {int(k): v for k, v in axes.get(name, {}).items()}
        out.append({"name": name, "dtype": str(a.dtype),
                    "shape": [dyn.get(d, int(s)) for d, s in enumerate(a.shape)]})
    return out


def _component(host: Any, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A component as the bundle records it: name, options and the plugin that provides it.

    The plugin is named by its distribution and version (what to ``pip install``), never
    by a path: predict uses only plugins installed where it runs. A plugin loaded from a
    folder (``--plugin-dir``, ``plugins.paths``) is recorded as such, without the folder.
    """
    entry = host.catalog.get(kind, spec["name"])
    info = host.infos.get(entry.plugin)
    origin = getattr(info, "origin", None)
    from_folder = origin == "path"
    return {"name": spec["name"], "plugin": entry.plugin,
            "distribution": None if from_folder else getattr(info, "distribution", None),
            "version": None if from_folder else getattr(info, "version", None),
            "origin": "plugin folder" if from_folder else (origin or "registered"),
            "options": spec.get("options") or {}}


def _bundle_json(run_dir: Path, config: dict[str, Any], host: Any, model: Any, cleaners: list[Any],
                 example: Any, eager_example: list[Any], axes: Any, files: dict[str, Any],
                 artifacts: dict[str, Any], folder: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from .. import __version__

    for info in artifacts.values():
        if info.get("file"):
            info["sha256"] = sha256_of(info["file"], Storage(folder))
    model_spec = config["model"] if isinstance(config["model"], dict) else {"name": config["model"]}
    cleaner_specs = [c if isinstance(c, dict) else {"name": c}
                     for c in config["data"].get("cleaners") or []]
    usable = [k for k in PREFERRED if artifacts.get(k, {}).get("verified")]
    usable += [k for k, v in artifacts.items() if v.get("verified") and k not in usable]
    usable.sort(key=lambda k: artifacts[k].get("loader", k) in CODE_LOADERS)  # data first
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "privet_version": __version__,
        "torch_version": torch.__version__,
        "run": {"dir": str(run_dir), "name": config.get("name")},
        "task": model.task_definition().name or type(model.task_definition()).__name__,
        "model": {**_component(host, "model", model_spec), "state_file": "model_state.json"},
        "cleaners": [{**_component(host, "cleaner", spec), "state": c.state_dict()}
                     for spec, c in zip(cleaner_specs, cleaners)],
        # how the run read its data: models that predict from whole series read inputs the same way
        "source": _component(host, "source", config["data"]["source"]
                             if isinstance(config["data"]["source"], dict)
                             else {"name": config["data"]["source"]}),
        "inputs": _io_spec(model.input_names(), [np.asarray(v) for v in example.feed.values()],
                           axes) if example is not None else [],
        "outputs": _io_spec(model.output_names(), eager_example, axes) if example is not None else [],
        "files": files,
        "artifacts": artifacts,
        "default_artifact": usable[0] if usable else None,
    }


# --- reading --------------------------------------------------------------------------

_DAMAGED = "the bundle is damaged or was edited; re-export the run"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _need(value: Any, types: type | tuple[type, ...], where: Path, key: str, what: str) -> Any:
    """``value`` if it has one of ``types`` (a bool is never a number), else a one-line error."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ExportError(f"{where}: {key} must be {what}, not {_kind(value)}; {_DAMAGED}")
    return value


def confined(folder: Path, name: Any, where: Path, key: str) -> str:
    """``name`` if it is a relative path that stays inside ``folder`` (symlinks followed)."""
    _need(name, str, where, key, "a file name")
    if (not name or "\x00" in name or "\\" in name or PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).drive or ".." in PurePosixPath(name).parts):
        raise ExportError(f"{where}: {key} is {name!r}: files of a bundle are relative paths "
                          f"inside its folder (no absolute path, no '..'); refusing the bundle")
    root = folder.resolve()
    real = (folder / name).resolve()
    if real == root or not real.is_relative_to(root):
        raise ExportError(f"{where}: {key} is {name!r}, which leads outside the bundle folder "
                          f"(through a symlink); refusing the bundle")
    return name


def _check_component(spec: Any, where: Path, key: str) -> None:
    _need(spec, dict, where, key, "an object")
    _need(spec.get("name"), str, where, f"{key}.name", "a component name")
    _need(spec.get("options", {}), dict, where, f"{key}.options", "an object")
    for field in ("plugin", "distribution", "version", "origin"):
        _need(spec.get(field), (str, type(None)), where, f"{key}.{field}", "a string")


def _check_artifact(folder: Path, info: Any, where: Path, key: str) -> None:
    _need(info, dict, where, key, "an object")
    if info.get("file") is not None:
        confined(folder, info["file"], where, f"{key}.file")
    for field, types, what in (("sha256", (str, type(None)), "a hex digest"),
                               ("loader", str, "an exporter name"), ("verified", bool, "true or false"),
                               ("dynamic", bool, "true or false"), ("example_batch", int, "a number"),
                               ("external_data", list, "a list of file names")):
        if field in info:
            _need(info[field], types, where, f"{key}.{field}", what)
    if info.get("example_batch", 1) < 1:
        raise ExportError(f"{where}: {key}.example_batch must be at least 1; {_DAMAGED}")
    for i, name in enumerate(info.get("external_data") or []):
        confined(folder, name, where, f"{key}.external_data.{i}")


def validate_meta(folder: Path, meta: dict[str, Any], where: Path) -> None:
    """Check every field predict uses before anything is built from it."""
    _check_component(meta["model"], where, "model")
    for i, spec in enumerate(_need(meta["cleaners"], list, where, "cleaners", "a list")):
        _check_component(spec, where, f"cleaners.{i}")
        _need(spec.get("state", {}), dict, where, f"cleaners.{i}.state", "an object")
    if meta.get("source") is not None:
        _check_component(meta["source"], where, "source")
    for role, item in _need(meta["files"], dict, where, "files", "an object").items():
        _need(item, dict, where, f"files.{role}", "an object")
        confined(folder, item.get("file"), where, f"files.{role}.file")
        _need(item.get("sha256"), (str, type(None)), where, f"files.{role}.sha256", "a hex digest")
    for name, info in _need(meta["artifacts"], dict, where, "artifacts", "an object").items():
        _check_artifact(folder, info, where, f"artifacts.{name}")
    _need(meta["inputs"], list, where, "inputs", "a list")
    _need(meta["outputs"], list, where, "outputs", "a list")
    _need(meta.get("default_artifact"), (str, type(None)), where, "default_artifact", "a name")


class Bundle:
    """An export bundle read back: checked, with its components rebuilt on demand."""

    def __init__(self, folder: Path, meta: dict[str, Any], storage: Storage | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.storage = storage if storage is not None else Storage(folder)

    @property
    def sealed(self) -> bool:
        """Whether the bundle's files are encrypted (opened with a key)."""
        return self.storage.cipher is not None

    @property
    def json_path(self) -> Path:
        return self.folder / "bundle.json"

    @staticmethod
    def locate(folder: str | Path) -> Path:
        """The bundle folder: ``folder``, or ``folder/export`` when a run folder was given."""
        folder = Path(folder)
        if not (folder / "bundle.json").exists() and (folder / "export" / "bundle.json").exists():
            folder = folder / "export"
        if not (folder / "bundle.json").exists():
            raise ExportError(f"{folder}: not an export bundle (no bundle.json); pass RUN/export "
                              f"from 'privet export RUN'")
        return folder

    @classmethod
    def open(cls, folder: str | Path, *, cipher: Any = None, verify_key: str | Path | None = None
             ) -> "Bundle":
        """Read ``bundle.json``, validate it, and check every preprocessing file.

        ``cipher`` opens a sealed bundle (a plaintext one is read as it is);
        ``verify_key`` (an Ed25519 public key file) first checks the bundle's signed
        manifest, refusing any file that was changed, added or removed.
        """
        from ..crypto import is_encrypted

        folder = cls.locate(folder)
        path = folder / "bundle.json"
        confined(folder, "bundle.json", path, "bundle.json")
        if verify_key is not None:
            from ..signing import verify_bundle

            verify_bundle(folder, verify_key)
        storage = Storage(folder)
        if cipher is not None and is_encrypted(path.read_bytes()[:16]):
            storage = Storage(folder, cipher=cipher)
        try:
            meta = json.loads(storage.read_text("bundle.json"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: corrupted bundle.json ({err}); re-export the run") from err
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise ExportError(f"{path}: not a Privet bundle description (format is "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ExportError(f"{path}: format_version is missing or not a number; re-export the run")
        if version > BUNDLE_VERSION:
            raise ExportError(f"{path}: bundle format version {version} is newer than this privet "
                              f"reads ({BUNDLE_VERSION}); upgrade privet (written by privet "
                              f"{meta.get('privet_version', '?')})")
        for key in ("model", "cleaners", "files", "artifacts", "inputs", "outputs"):
            if key not in meta:
                raise ExportError(f"{path}: missing key {key!r}; the bundle is incomplete, re-export it")
        validate_meta(folder, meta, path)
        bundle = cls(folder, meta, storage)
        for role, item in meta["files"].items():
            bundle._check_file(item["file"], item.get("sha256"), f"preprocessing file ({role})")
        return bundle

    def _check_file(self, name: str, sha256: str | None, what: str) -> Path:
        p = self.folder / name
        if self.storage.path(name).is_dir() and what.endswith(" artifact"):
            pass  # a folder artifact (a Hugging Face model folder): its digest covers every file
        elif not self.storage.path(name).is_file():
            raise ExportError(f"{p}: missing {what}; the bundle is incomplete, copy the whole "
                              f"export folder or re-export the run")
        if sha256 and sha256_of(name, self.storage) != sha256:
            raise ExportError(f"{p}: checksum mismatch ({what} is corrupted or truncated); copy "
                              f"the export folder again or re-export the run")
        return p

    def read_json(self, role: str) -> Any:
        name = self.meta["files"][role]["file"]
        try:
            return json.loads(self.storage.read_text(name))
        except (ValueError, UnicodeDecodeError) as err:
            raise ExportError(f"{self.folder / name}: not valid JSON ({err}); re-export the run") from err

    # -- components -------------------------------------------------------------------------

    def components(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(kind, bundle.json key, spec) of every component predict may build."""
        out = [("model", "model", self.meta["model"])]
        out += [("cleaner", f"cleaners.{i}", s) for i, s in enumerate(self.meta["cleaners"])]
        if self.meta.get("source") is not None:
            out.append(("source", "source", self.meta["source"]))
        return out

    def check_plugins(self, host: Any) -> None:
        """Every component's plugin is installed here; else one line naming its distribution."""
        for kind, _key, spec in self.components():
            try:
                host.catalog.get(kind, spec["name"])
            except PrivetError:
                raise self._missing(host, kind, spec) from None

    def _missing(self, host: Any, kind: str, spec: dict[str, Any]) -> ExportError:
        name, plugin = spec["name"], spec.get("plugin")
        dist, version = spec.get("distribution"), spec.get("version")
        what = f"{self.folder}: the bundle's {kind} {name!r}"
        info = host.infos.get(plugin) if plugin else None
        if info is not None and info.status != "loaded":
            why = " ".join(str(info.error or "").split())
            return ExportError(f"{what} needs plugin {plugin!r}, which is {info.status} here"
                               + (f" ({why})" if why else "") + "; enable it to predict")
        if spec.get("origin") == "plugin folder":
            return ExportError(f"{what} comes from the in-house plugin {plugin!r} (a plugin folder "
                               f"when the run was exported); pass --plugin-dir with the folder "
                               f"that holds {plugin}.py. A bundle never names code to load")
        if dist:
            pin = f"{dist}=={version}" if version else dist
            return ExportError(f"{what} needs the distribution {dist} {version or ''} (plugin "
                               f"{plugin!r}), which is not installed; pip install '{pin}'")
        return ExportError(f"{what} (plugin {plugin!r}) is not installed here")

    def _make(self, host: Any, kind: str, key: str, spec: dict[str, Any]) -> Any:
        import attrs

        from ..config import make_converter, structure

        try:
            entry = host.catalog.get(kind, spec["name"])
        except PrivetError:
            raise self._missing(host, kind, spec) from None
        installed = host.infos.get(entry.plugin)
        if installed is not None and spec.get("version") and installed.version != spec.get("version"):
            _stderr(f"warning: {kind} {spec['name']!r} was exported with {spec.get('distribution')} "
                    f"{spec['version']}, {installed.version} is installed")
        # The options' types are checked here; validators are off because files they name
        # (a pretrained checkpoint) need not exist on the machine that predicts.
        try:
            with attrs.validators.disabled():
                options = structure(make_converter(), spec.get("options") or {}, entry.cls.Options,
                                    prefix=f"{key}.options")
        except ConfigError as err:
            raise ExportError(f"{self.json_path}: {err}; {_DAMAGED}") from err
        return entry.cls(options)

    def _load_state(self, component: Any, state: Any, where: str) -> None:
        """``component.load_state_dict(state)``; a state of the wrong shape is one line."""
        if not isinstance(state, dict):
            raise ExportError(f"{where} must be a JSON object, not {_kind(state)}; {_DAMAGED}")
        try:
            component.load_state_dict(state)
        except PrivetError:
            raise
        except Exception as err:
            raise ExportError(f"{where} does not fit {component.name!r} ({type(err).__name__}: "
                              f"{_first_line(err)}); {_DAMAGED}") from err

    def load_model(self, host: Any) -> Any:
        model = self._make(host, "model", "model", self.meta["model"])
        self._load_state(model, self.read_json("model_state"),
                         str(self.folder / self.meta["files"]["model_state"]["file"]))
        return model

    def read_with_source(self, host: Any, input_path: Path) -> Iterator[tuple[str, Any]]:
        """Read ``input_path`` with the run's own source component and its options.

        Window models (``Model.examples_at_inference``) need records exactly as training
        saw them (parsed timestamps, column roles), so their inputs are read by the same
        source, pointed at the input file instead of the training data.
        """
        import attrs

        from ..components import BadRecord

        spec = self.meta.get("source")
        if not spec:
            raise ExportError(f"{self.folder}: bundle.json names no source; re-export the run "
                              f"with this version of privet")
        source = self._make(host, "source", "source", spec)
        fields = {f.name for f in attrs.fields(type(source.options))} if attrs.has(type(source.options)) else set()
        if "paths" not in fields:
            raise ExportError(f"source {spec['name']!r} has no 'paths' option; it cannot read "
                              f"{input_path} for prediction")
        source.options = attrs.evolve(source.options, paths=[Path(input_path)])
        for shard in source.shards():
            name = Path(shard.path).name
            for k, item in enumerate(source.read(shard), start=1):
                if isinstance(item, BadRecord):
                    yield item.location or f"{name} record {k}", item
                else:
                    yield f"{name} record {k}", item

    def load_cleaners(self, host: Any) -> list[Any]:
        cleaners = []
        for i, spec in enumerate(self.meta["cleaners"]):
            cleaner = self._make(host, "cleaner", f"cleaners.{i}", spec)
            self._load_state(cleaner, spec.get("state") or {},
                             f"{self.json_path}: cleaners.{i}.state")
            cleaners.append(cleaner)
        return cleaners

    # -- artifacts --------------------------------------------------------------------------

    def artifact_names(self) -> list[str]:
        return [k for k, v in self.meta["artifacts"].items() if v.get("file")]

    def is_code(self, name: str, host: Any | None = None) -> bool:
        """Whether loading or running this artifact can run code (TorchScript, ``.pt2``).

        A plugin's exporter says so with ``artifact_is_code = False``; unknown loaders count
        as code.
        """
        loader = self.meta["artifacts"][name].get("loader", name)
        if loader in CODE_LOADERS:
            return True
        if loader in ("onnx", "torchao"):
            return False
        try:
            entry = host.catalog.get("exporter", loader) if host is not None else None
        except PrivetError:
            entry = None
        return bool(entry.cls.artifact_is_code) if entry is not None else True

    def choose(self, name: str | None, *, trust_code: bool = False, host: Any | None = None) -> str:
        """The artifact to run: ``name``, or the first verified one that needs no trust."""
        arts = self.meta["artifacts"]
        if name is None:
            return self._default(trust_code, host)
        if name not in arts or not arts[name].get("file"):
            raise ExportError(f"{self.folder}: no {name!r} artifact (have: "
                              f"{', '.join(self.artifact_names()) or 'none'}); export it with "
                              f"'privet export RUN --format ...'")
        if not arts[name].get("verified"):
            raise ExportError(f"{self.folder}: the {name} artifact failed verification at export "
                              f"({arts[name].get('error')}); re-export the run")
        if not trust_code and self.is_code(name, host):
            raise self._untrusted(name)
        return name

    def _default(self, trust_code: bool, host: Any | None) -> str:
        arts = self.meta["artifacts"]
        order = [self.meta.get("default_artifact"), *PREFERRED, *arts]
        verified = [k for k in dict.fromkeys(order)
                    if k in arts and arts[k].get("verified") and arts[k].get("file")]
        if not verified:
            raise ExportError(f"{self.folder}: no verified artifact in this bundle; re-export the run")
        usable = [k for k in verified if trust_code or not self.is_code(k, host)]
        if not usable:
            raise self._untrusted(verified[0])
        return usable[0]

    def _untrusted(self, name: str) -> ExportError:
        return ExportError(f"{self.folder}: the {name} artifact is a program (loading and running "
                           f"it can run code); predict with ONNX (--artifact onnx, or "
                           f"'privet export RUN --format onnx'), or pass --trust-code if you "
                           f"trust whoever made this bundle")

    def runner(self, name: str, host: Any, model: Any | None = None, *,
               trust_code: bool = False) -> Runner:
        """Check the artifact's checksum and load it as a runner (no pickles involved)."""
        if not trust_code and self.is_code(name, host):
            raise self._untrusted(name)
        info = self.meta["artifacts"][name]
        if self.sealed:
            return self._sealed_runner(name, info, host)
        path = self._check_file(info["file"], info.get("sha256"), f"{name} artifact")
        for i, extra in enumerate(info.get("external_data") or []):
            self._check_file(extra, None, f"{name} external data ({i})")
        loader = info.get("loader", name)
        if loader == "torchao":
            from .quantize import load_torchao

            if model is None:
                raise ExportError(f"the {name} artifact needs the model plugin to build the module")
            return load_torchao(model.build(), path)
        try:
            entry = host.catalog.get("exporter", loader)
        except PrivetError as err:
            raise ExportError(f"{path}: exporter {loader!r} that wrote this artifact is not "
                              f"installed ({_first_line(err)})") from err
        return entry.cls(entry.cls.Options()).load(path)

    def _sealed_runner(self, name: str, info: dict[str, Any], host: Any) -> Runner:
        """A sealed artifact decrypted into memory (authenticated, checksum checked) and
        loaded from those bytes by its exporter's ``load_bytes``: never plaintext on disk."""
        path = self.folder / info["file"]
        if info.get("external_data") or self.storage.path(info["file"]).is_dir():
            raise ExportError(f"{path}: an encrypted bundle's artifact must be one file; re-export")
        if not self.storage.path(info["file"]).is_file():
            raise ExportError(f"{path}: missing {name} artifact; the bundle is incomplete, copy "
                              f"the whole export folder or re-export the run")
        data = self.storage.read_bytes(info["file"])
        if info.get("sha256") and hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ExportError(f"{path}: checksum mismatch ({name} artifact is corrupted or "
                              f"truncated); copy the export folder again or re-export the run")
        loader = info.get("loader", name)
        try:
            entry = host.catalog.get("exporter", loader)
        except PrivetError as err:
            raise ExportError(f"{path}: exporter {loader!r} that wrote this artifact is not "
                              f"installed ({_first_line(err)})") from err
        exporter = entry.cls(entry.cls.Options())
        if not hasattr(exporter, "load_bytes"):
            raise ExportError(f"{path}: exporter {loader!r} cannot load an artifact from memory, "
                              f"so the {name} artifact of an encrypted bundle cannot be run")
        return exporter.load_bytes(data, path)

    def load_module(self, name: str, host: Any, *, trust_code: bool = False) -> Any:
        """Check the artifact's checksum and load it as a module (``privet generate``)."""
        if not trust_code and self.is_code(name, host):
            raise self._untrusted(name)
        if self.sealed:
            raise ExportError(f"{self.folder}: an encrypted bundle's artifact is loaded only from "
                              f"memory by 'privet predict'; generate from the run folder instead")
        info = self.meta["artifacts"][name]
        path = self._check_file(info["file"], info.get("sha256"), f"{name} artifact")
        loader = info.get("loader", name)
        try:
            entry = host.catalog.get("exporter", loader)
        except PrivetError as err:
            raise ExportError(f"{path}: exporter {loader!r} that wrote this artifact is not "
                              f"installed ({_first_line(err)})") from err
        return entry.cls(entry.cls.Options()).load_module(path)
