"""The ``privet`` launcher: a lazy click group that only wires commands together.

Each built-in command lives in its own module under ``privet.commands`` and is imported
only when it is asked for (imported lazily to keep ``privet --help`` fast); plugins are
loaded only when a command needs them, and torch never for ``--help``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from . import __version__
from .errors import PrivetError

BUILTIN_COMMANDS = {
    "plugins": "privet.commands.plugins:plugins",
    "validate": "privet.commands.validate:validate",
    "new": "privet.commands.new:new",
    "init": "privet.commands.init:init",
    "run": "privet.commands.run:run",
    "resume": "privet.commands.run:resume",
    "export": "privet.commands.export:export",
    "predict": "privet.commands.predict:predict",
    "generate": "privet.commands.generate:generate",
    "chat": "privet.commands.generate:chat",
    "cache": "privet.commands.cache:cache",
    "decrypt": "privet.commands.decrypt:decrypt",
    "keys": "privet.commands.keys:keys",
    "runs": "privet.commands.runs:runs",
    "federate": "privet.commands.federate:federate",
    "audit": "privet.commands.audit:audit",
    "serve": "privet.commands.serve:serve",
}
#: Shown by ``privet --help`` without importing the command modules.
SHORT_HELP = {
    "plugins": "List plugins with distribution, version, status and components.",
    "validate": "Check a pipeline file without touching data.",
    "new": "Create a new plugin package from the template.",
    "init": "Write a starter pipeline file for an installed modality.",
    "run": "Run a pipeline: prepare data, train, evaluate, export.",
    "resume": "Continue a stopped or killed run from its last checkpoint.",
    "export": "Export a trained run (ONNX, torch.export, TorchScript or a plugin's format).",
    "predict": "Predict with an exported bundle on raw records.",
    "generate": "Generate text with a language model run or export, streamed.",
    "chat": "Chat interactively with a language model run or export.",
    "cache": "List or delete the prepared data caches of a runs folder.",
    "decrypt": "Decrypt a file sealed by Privet (e.g. predict --out) with its key.",
    "keys": "Make keys: an Ed25519 signing key pair for export --sign.",
    "runs": "Manage run folders: purge a run down to its export bundle.",
    "federate": "Federated training: clients train on their own data, weights are averaged.",
    "audit": "Verify a tamper-evident audit log written by 'privet serve'.",
    "serve": "Serve exported bundles over HTTPS: JWT roles, rate limits, audit log.",
}


class LazyGroup(click.Group):
    """Imports built-in commands on demand and asks plugins only for unknown names."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(BUILTIN_COMMANDS) | set(self.commands))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            text = cmd.get_short_help_str(60) if cmd is not None else SHORT_HELP.get(name, "")
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = BUILTIN_COMMANDS.get(cmd_name)
        if target is not None:
            module, attr = target.split(":")
            cmd = getattr(importlib.import_module(module), attr)
            self.add_command(cmd, cmd_name)
            return cmd
        if ctx.resilient_parsing:
            return None
        try:
            get_host(ctx).register_commands(self)
        except PrivetError as err:
            _fail(err, ctx)
        return self.commands.get(cmd_name)


def get_host(ctx: click.Context) -> Any:
    """The plugin host of this invocation, built on first use from the group's options."""
    root = ctx.find_root()
    host = root.meta.get("privet.host")
    if host is None:
        from .plugins import ENV_PATHS, load_plugins

        params = root.params
        disable = [p[3:] for p in params.get("p", ()) if p.startswith("no:")]
        paths = [os.path.abspath(d) for d in params.get("plugin_dir", ())]
        if paths:  # children (torchrun workers, DataLoader workers) load them too
            prior = [p for p in os.environ.get(ENV_PATHS, "").split(os.pathsep) if p]
            os.environ[ENV_PATHS] = os.pathsep.join(dict.fromkeys(prior + paths))
        host = load_plugins(disable=disable, paths=(),
                            on_warning=lambda msg: click.echo(f"privet: warning: {msg}", err=True))
        root.meta["privet.host"] = host
    return host


def _fail(err: BaseException, ctx: click.Context | None = None, *, debug: bool = False) -> None:
    debug = (debug or bool(ctx and ctx.find_root().params.get("debug"))
             or os.environ.get("PRIVET_DEBUG") == "1")
    if debug:
        import traceback

        traceback.print_exception(err)
    message = str(err).replace("\n", " ")
    click.echo(f"privet: error: {message}", err=True)
    sys.exit(getattr(err, "exit_code", 2))


def installed_plugin_distributions() -> list[tuple[str, str, list[str]]]:
    """(distribution, version, plugin names) of each ``privet.plugins`` entry point.

    Read from the installed metadata only: no plugin (and so no torch) is imported, so
    ``privet --version`` stays as fast as ``--help``.
    """
    from importlib.metadata import entry_points

    found: dict[tuple[str, str], list[str]] = {}
    for ep in entry_points(group="privet.plugins"):
        dist = ep.dist
        key = (dist.name, dist.version) if dist is not None else ("(unknown distribution)", "")
        found.setdefault(key, []).append(ep.name)
    return [(name, version, sorted(plugins)) for (name, version), plugins in sorted(found.items())]


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """The eager ``--version`` option: the core's version, then each plugin distribution's."""
    if not value or ctx.resilient_parsing:
        return
    lines = [f"privet, version {__version__}"]
    plugins = installed_plugin_distributions()
    lines.append("plugins:" if plugins else "plugins: none installed")
    lines += [f"  {name} {version} ({', '.join(names)})" for name, version, names in plugins]
    click.echo("\n".join(lines))
    ctx.exit()


def _validate_p(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for v in value:
        if not v.startswith("no:") or len(v) <= 3:
            raise click.BadParameter(f"{v!r}: use -p no:NAME to disable plugin NAME")
    return value


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Plugins may add commands; 'privet plugins -v' lists them.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_version,
              help="Show the version of privet and of the installed plugin distributions.")
@click.option("-p", "p", multiple=True, metavar="no:NAME", callback=_validate_p,
              help="Disable the plugin NAME (repeatable); it is not even imported.")
@click.option("--plugin-dir", multiple=True, type=click.Path(file_okay=False),
              help="Load every *.py module in this folder as a plugin (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, p: tuple[str, ...], plugin_dir: tuple[str, ...], debug: bool) -> None:
    """Privet: train PyTorch models on private data, end to end."""
    for d in plugin_dir:
        if not os.path.isdir(d):
            raise click.BadParameter(f"{d!r} is not a folder", param_hint="--plugin-dir")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user-facing errors print one line and exit 2 (``--debug``: traceback)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="privet", standalone_mode=False)
    except PrivetError as err:
        _fail(err, debug="--debug" in args)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("privet: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


def entry() -> None:
    """The ``privet`` console script: :func:`main`, then a prompt exit.

    With torch loaded, CPython's own teardown (freeing every module, torch's C++ static
    destructors) takes 0.6-1.2 s after the last line was printed, on a run that is
    complete and flushed. Every file a run writes is already fsynced by the storage
    module, so after the exit handlers (atexit: multiprocessing children, loggers) and a
    flush of stdout/stderr the process leaves with ``os._exit``. In-process callers of
    :func:`main` (tests, notebooks) keep the normal exit.
    """
    try:
        main()
        code: int = 0
    except SystemExit as exit:
        code = _exit_code(exit.code)
    _leave(code)


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)  # what sys.exit("message") would print
    return 1


def _leave(code: int) -> None:
    import atexit
    import os

    if "torch" not in sys.modules:  # nothing heavy to tear down: the ordinary exit
        sys.exit(code)
    atexit._run_exitfuncs()  # multiprocessing's handler stops loader worker processes
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":  # torchrun -m privet.cli ...
    entry()
