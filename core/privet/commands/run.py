"""``privet run FILE`` and ``privet resume RUN``."""

from __future__ import annotations

import json
import os
import sys

import click

from ..cli import get_host


class PathOrUrl(click.Path):
    """A local path checked as ``click.Path`` does, or an ``s3://`` URL passed as it is
    (the object store answers for it when it is used)."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, str) and value.startswith("s3://"):
            return value
        return super().convert(value, param, ctx)


def _summary(run_dir, report) -> None:
    from ..runs import shown

    final = report.get("final", {})
    metrics = " ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float))
    click.echo(f"run {report['status']}: {shown(run_dir)} ({report['steps']} steps) {metrics}")


def _torchrun(nproc: int, argv: list[str], max_restarts: int) -> None:
    """Re-launch this command under torch.distributed.run with ``nproc`` workers."""
    from torch.distributed.run import main as torchrun_main

    args = [f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--standalone",
            "-m", "privet"] + argv
    os.environ["PRIVET_LAUNCHED"] = "1"
    torchrun_main(args)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the file, e.g. -s train.epochs=3.")
@click.option("--name", default=None, help="Run folder name (default: the file's 'name').")
@click.option("--resume", "resume_dir", type=PathOrUrl(file_okay=False), default=None,
              help="Continue this existing run folder instead of starting a new one.")
@click.option("--nproc-per-node", type=int, default=1, help="Start N workers with torchrun.")
@click.option("--max-restarts", type=int, default=0, help="torchrun restarts after a worker dies.")
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print report.json when done.")
@click.pass_context
def run(ctx: click.Context, file: str, overrides: tuple[str, ...], name: str | None,
        resume_dir: str | None, nproc_per_node: int, max_restarts: int, progress: str | None,
        as_json: bool) -> None:
    """Run the pipeline FILE: prepare data, train, evaluate, export."""
    from ..config import run_name_problem
    from ..errors import UsageError
    from ..train.engine import run_from_config

    problem = run_name_problem(name) if name is not None else None
    if problem is not None:  # checked before anything is created or launched
        raise UsageError(f"--name: {problem}")
    if nproc_per_node > 1 and os.environ.get("PRIVET_LAUNCHED") != "1":
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--nproc-per-node") if "--nproc-per-node" in argv else None
        if i is not None:
            del argv[i:i + 2]
        argv = [a for a in argv if not a.startswith("--nproc-per-node=")]
        _torchrun(nproc_per_node, argv, max_restarts)
        return
    host = get_host(ctx)
    run_dir, report = run_from_config(file, host=host, overrides=list(overrides), name=name,
                                      resume_dir=resume_dir, progress=progress)
    if report and int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(report, indent=2)) if as_json else _summary(run_dir, report)


@click.command()
@click.argument("run_dir", type=PathOrUrl(file_okay=False, exists=True))
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), default=None)
@click.pass_context
def resume(ctx: click.Context, run_dir: str, progress: str | None) -> None:
    """Continue RUN_DIR from its newest complete checkpoint to the same result."""
    from ..train.engine import run_from_config

    host = get_host(ctx)
    run_dir_path, report = run_from_config(None, host=host, resume_dir=run_dir, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        _summary(run_dir_path, report)
