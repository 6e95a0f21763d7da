"""``privet federate FILE`` and ``privet federate --resume RUN``."""

from __future__ import annotations

import click

from ..cli import get_host


@click.command()
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue this federation run folder from its last committed round.")
@click.option("--name", default=None, help="Run folder name (default: the file's 'name').")
@click.pass_context
def federate(ctx: click.Context, file: str | None, resume_dir: str | None,
             name: str | None) -> None:
    """Federated training: clients train locally on their own data, weights are averaged."""
    from ..config import run_name_problem
    from ..errors import UsageError
    from ..federate.config import load_federation
    from ..federate.coordinator import Coordinator

    if (file is None) == (resume_dir is None):
        raise UsageError("give a federation file, or --resume RUN_DIR (not both)"
                         if file else "give a federation file (privet federate federation.yaml) "
                         "or --resume RUN_DIR")
    problem = run_name_problem(name) if name is not None else None
    if problem is not None:
        raise UsageError(f"--name: {problem}")
    host = get_host(ctx)
    if resume_dir is not None:
        coordinator = Coordinator.resume(resume_dir, host)
    else:
        load_federation(file)  # a bad file fails before any folder is made
        coordinator = Coordinator.start(file, host, name=name)
    report = coordinator.run()
    final = " ".join(f"{k}={v:.4g}" for k, v in report["final"].items() if isinstance(v, float))
    click.echo(f"federation {report['status']}: {coordinator.run_dir} ({report['rounds_done']} "
               f"rounds, best round {report.get('best_round')}) {final}")
