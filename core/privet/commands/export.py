"""``privet export RUN``: write RUN/export/ with verified artifacts and preprocessing files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli import get_host
from ..storage import Storage
from .run import PathOrUrl


def _copy_bundle(bundle: Path, out: str) -> None:
    """The finished bundle to ``out``: an s3:// prefix (bundle.json last) or a folder."""
    import shutil

    from ..objectstore import is_remote, publish

    if is_remote(out):
        publish(bundle, out)
        return
    target = Path(out).resolve()
    with Storage(target.parent, cipher=None).atomic_dir(target.name) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _summary(report: dict) -> None:
    click.echo(f"bundle: {report['bundle']}")
    for name, art in report["artifacts"].items():
        ver = art.get("verification") or {}
        diff = max((v.get("max_abs_diff") or 0.0 for v in ver.values() if isinstance(v, dict)
                    and v.get("max_abs_diff") is not None), default=None)
        how = f"verified, max |diff| {diff:.2g}" if diff is not None else "verified"
        click.echo(f"  {name:<13} {art['file']:<24} {_size(art['size_bytes']):>9}  {how}")
    for name, q in (report.get("quantization") or {}).items():
        if isinstance(q, dict) and "size_ratio" in q:
            click.echo(f"  {name}: {q['size_ratio']:.2f}x the fp32 size; validation "
                       f"{q['metrics_before']} -> {q['metrics_after']}")
    for note in report.get("notes", []):
        click.echo(f"  note: {note}", err=True)


@click.command()
@click.argument("run_dir", type=PathOrUrl(file_okay=False, exists=True))
@click.option("--format", "formats", multiple=True, metavar="NAME",
              help="onnx, torch_export, torchscript, all, or a plugin's exporter (repeatable). "
                   "Default: the run's export.formats, else onnx.")
@click.option("--quantize", type=click.Choice(["int8", "int8-static"]), default=None,
              help="Add int8 copies: dynamic, or static calibrated on validation examples.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False, exists=True), default=None,
              metavar="KEYFILE", help="Sign the bundle with this Ed25519 private key (PEM; "
                                      "'privet keys new-signing' makes one): export/manifest.json.")
@click.option("--out", "out", type=PathOrUrl(file_okay=False), default=None, metavar="DIR",
              help="Also copy the bundle here: a folder or an s3:// prefix.")
@click.pass_context
def export(ctx: click.Context, run_dir: str, formats: tuple[str, ...], quantize: str | None,
           as_json: bool, sign_key: str | None, out: str | None) -> None:
    """Export the trained RUN_DIR to ONNX, torch.export or TorchScript, verified against eager.

    Writes RUN_DIR/export/: the artifacts, model_state.json and the model's preprocessing
    files, and bundle.json describing inputs, outputs and checks (see 'privet predict').
    """
    from ..export.bundle import export_run
    from ..runs import load_run, shown

    if sign_key:  # a bad key is refused before anything is exported
        from ..signing import load_signing_key

        load_signing_key(Path(sign_key))
    stored = load_run(run_dir)  # config.yaml is read once, here; s3://: fetched to a working copy
    run_dir = str(stored.run_dir)
    storage = stored.storage
    chosen = list(formats)
    if not chosen:
        configured = stored.config.get("export") or {}
        chosen = list(configured.get("formats") or []) if isinstance(configured, dict) else []
        quantize = quantize or (configured.get("quantize") if isinstance(configured, dict) else None)
    report = export_run(run_dir, host=get_host(ctx), formats=chosen or ["onnx"], quantize=quantize,
                        config=stored.config)
    if storage.exists("report.json"):
        run_report = storage.read_json("report.json")
        run_report["export"] = report
        storage.write_json("report.json", run_report)
    if sign_key:  # last: the manifest covers every file of the finished bundle
        from ..signing import sign_bundle

        manifest = sign_bundle(Path(run_dir) / "export", sign_key)
        Storage(run_dir).flush("export")  # a run on an object store: the manifest goes up too
        click.echo(f"signed: {manifest}", err=True)
    if out:
        _copy_bundle(Path(run_dir) / "export", out)
    report["bundle"] = out or shown(report["bundle"])  # a run on an object store: its URL
    click.echo(json.dumps(report, indent=2)) if as_json else _summary(report)
