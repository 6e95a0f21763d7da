"""``privet predict BUNDLE INPUT``: predictions as JSON Lines, one per input record.

Exit codes: 0 when at least one record was predicted (records that could not be get an
error entry and are counted in the summary), 1 when none was (or, with ``--strict``, when
any record failed), 2 when prediction could not start (a refused or damaged bundle, a
missing plugin, a code artifact without ``--trust-code``, a bad argument).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator

import click

from ..cli import get_host
from ..objectstore import is_remote
from .run import PathOrUrl


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[IO[str]]:
    """A temp file beside ``path`` (mode 0600), renamed over it only when predict finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _sealed_output(path: Path, cipher: object) -> Iterator[IO[str]]:
    """Predictions collected in memory, sealed with ``cipher`` (the format of
    :mod:`privet.crypto`) and written atomically (0600) only when predict finished."""
    import io

    from ..storage import Storage

    buffer = io.StringIO()
    yield buffer
    sealed = cipher.encrypt(buffer.getvalue().encode("utf-8"))  # type: ignore[attr-defined]
    Storage(path.parent, cipher=None).write_bytes(path.name, sealed)


@click.command()
@click.argument("bundle", type=PathOrUrl(exists=True))
@click.argument("input_path", metavar="INPUT", type=PathOrUrl(exists=True))
@click.option("--out", "-o", type=PathOrUrl(dir_okay=False), default=None,
              help="Write predictions to this JSONL file (default: standard output).")
@click.option("--artifact", default=None, metavar="NAME",
              help="Which artifact runs: onnx, onnx_int8, torch_int8, or with --trust-code "
                   "torch_export, torchscript (default: the first verified one, ONNX preferred).")
@click.option("--trust-code", is_flag=True,
              help="Allow artifacts that are programs (TorchScript, torch.export): loading "
                   "them can run code. Only for bundles from someone you trust.")
@click.option("--strict", is_flag=True,
              help="Exit with code 1 when any record could not be predicted.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--key", default=None, metavar="REF",
              help="Key reference (env:NAME, file:PATH, command:...) of an encrypted bundle; "
                   "default: the env: or file: reference the bundle records. With a key, "
                   "--out is encrypted too ('privet decrypt' reads it).")
@click.option("--verify-key", type=click.Path(dir_okay=False), default=None, metavar="PUB",
              help="Ed25519 public key (PEM): refuse the bundle unless its signed manifest "
                   "verifies and every file matches it.")
@click.pass_context
def predict(ctx: click.Context, bundle: str, input_path: str, out: str | None,
            artifact: str | None, trust_code: bool, strict: bool, batch_size: int,
            key: str | None, verify_key: str | None) -> None:
    """Predict with an exported BUNDLE (RUN/export) on the raw records in INPUT.

    INPUT is what the model's plugin reads: JSONL or CSV records by default, image files
    or a folder for image models, series for time series models. The bundle's saved
    preprocessing is applied; records that cannot be read or encoded get an error entry
    with their file and line, and the rest are predicted. Exit code 0: some or all
    records predicted; 1: none (or any failed, with --strict); 2: cannot predict at all.
    """
    with contextlib.ExitStack() as remote:
        if any(is_remote(p) for p in (bundle, input_path, out or "")):
            bundle, input_path, local_out = _staged_io(remote, bundle, input_path, out)
        else:
            local_out = out
        _predict(ctx, bundle, input_path, local_out, artifact, trust_code, strict, batch_size,
                 key, verify_key, shown=out)


def _staged_io(stack: contextlib.ExitStack, bundle: str, input_path: str,
               out: str | None) -> tuple[str, str, str | None]:
    """Local copies of an s3:// bundle (or a run's export) and input (private temp folders,
    removed after), and a local output file uploaded to its s3:// URL when predict succeeded."""
    from ..objectstore import fetch, publish
    from ..staging import private_folder, staged_path

    bundle = staged_path(stack, bundle, "predict", prefer_export=True)
    if not (is_remote(input_path) or (out and is_remote(out))):
        return bundle, input_path, out
    tmp = private_folder(stack, "predict")
    if is_remote(input_path):
        input_path = str(fetch(input_path, tmp / "input"))
    if out and is_remote(out):
        local = tmp / "out" / Path(out).name
        local.parent.mkdir(mode=0o700)
        stack.callback(lambda: local.exists() and publish(local, out))
        return bundle, input_path, str(local)
    return bundle, input_path, out


def _predict(ctx: click.Context, bundle: str, input_path: str, out: str | None,
             artifact: str | None, trust_code: bool, strict: bool, batch_size: int,
             key: str | None, verify_key: str | None, *, shown: str | None) -> None:
    from ..export.bundle import Bundle
    from ..export.predict import bundle_cipher, predict_path

    host = get_host(ctx)
    if verify_key:  # before anything in the bundle (even its key reference) is used
        from ..signing import verify_bundle

        verify_bundle(Bundle.locate(bundle), verify_key)
    cipher = bundle_cipher(bundle, host, key)
    with contextlib.ExitStack() as stack:
        fh = sys.stdout
        if out and cipher is not None:  # predictions of a private model: sealed, never plain
            fh = stack.enter_context(_sealed_output(Path(out), cipher))
        elif out:  # a refused bundle or a crash leaves an earlier output file as it was
            fh = stack.enter_context(_atomic_output(Path(out)))
        summary = predict_path(bundle, input_path, fh, host=host, artifact=artifact,
                               batch_size=batch_size, trust_code=trust_code, cipher=cipher)
    errors = ", ".join(f"{k}: {v}" for k, v in summary.errors.most_common())
    click.echo(f"predicted {summary.predicted} of {summary.total} records with "
               f"{summary.artifact}" + (f"; errors: {errors}" if errors else "")
               + (f" -> {shown}" if shown else ""), err=True)
    if summary.predicted == 0 or (strict and summary.errors):
        sys.exit(1)  # not ctx.exit: the launcher runs click with standalone_mode=False
