"""``privet predict BUNDLE INPUT``: predictions as JSON Lines, one per input record."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..cli import get_host


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True))
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write predictions to this JSONL file (default: standard output).")
@click.option("--artifact", default=None, metavar="NAME",
              help="Which artifact runs: onnx, onnx_int8, torch_export, torch_int8, torchscript "
                   "(default: the bundle's first verified one, ONNX preferred).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.pass_context
def predict(ctx: click.Context, bundle: str, input_path: str, out: str | None,
            artifact: str | None, batch_size: int) -> None:
    """Predict with an exported BUNDLE (RUN/export) on the raw records in INPUT.

    INPUT is what the model's plugin reads: JSONL or CSV records by default, image files
    or a folder for image models, series for time series models. The bundle's saved
    preprocessing is applied; records that cannot be read or encoded get an error entry
    with their file and line, and the rest are predicted.
    """
    from ..export.predict import predict_path

    host = get_host(ctx)
    with contextlib.ExitStack() as stack:
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(out, "w", encoding="utf-8"))
        else:
            fh = sys.stdout
        summary = predict_path(bundle, input_path, fh, host=host, artifact=artifact,
                               batch_size=batch_size)
    errors = ", ".join(f"{k}: {v}" for k, v in summary.errors.most_common())
    click.echo(f"predicted {summary.predicted} of {summary.total} records with "
               f"{summary.artifact}" + (f"; errors: {errors}" if errors else "")
               + (f" -> {out}" if out else ""), err=True)
