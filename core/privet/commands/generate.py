"""``privet generate`` and ``privet chat``: text from a trained run or an export, streamed.

Generation is a model capability (:meth:`privet.Model.generate`), not a plugin command:
any model that implements it (``text.gpt``, ``llm.causal_lm``) works here. The target is
a run folder (its best weights), an export bundle (``RUN/export``: its default artifact,
or ``--artifact``) or an artifact folder inside one (``RUN/export/merged``); a bundle's
artifact is turned into a module by the exporter that wrote it (``Exporter.load_module``).
Any of them may be an ``s3://`` URL: it is read from a private local copy
(:mod:`privet.staging`), removed when the command ends.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..cli import get_host
from .run import PathOrUrl


def _bundle_target(path: Path, artifact: str | None) -> tuple[Path | None, str | None]:
    """(bundle folder, artifact name), or (None, None) when ``path`` is taken as a run folder."""
    if (path / "config.yaml").exists():
        return None, None
    if (path / "bundle.json").exists():
        return path, artifact
    if (path.parent / "bundle.json").exists():  # an artifact folder inside a bundle
        return path.parent, artifact or path.name
    return None, None


def load_for_generation(target: str | Path, host: Any, *, artifact: str | None = None,
                        trust_code: bool = False) -> tuple[Any, Any]:
    """``(model component, module)`` for a run folder, an export bundle or an artifact in one."""
    path = Path(target)
    folder, name = _bundle_target(path, artifact)
    if folder is None:
        if artifact:
            raise click.BadParameter("--artifact applies to an export (RUN/export), not a run folder",
                                     param_hint="--artifact")
        from ..train.loading import load_trained

        return load_trained(path, host)
    from ..export.bundle import Bundle

    bundle = Bundle.open(folder)
    name = bundle.choose(name, trust_code=trust_code, host=host)
    bundle.check_plugins(host)
    model = bundle.load_model(host)
    return model, bundle.load_module(name, host, trust_code=trust_code)


def _place(module: Any, device: str) -> Any:
    """``module`` on ``device`` (``auto``: CUDA when there is one), in eval mode."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    params = next(iter(module.parameters()), None)
    if params is not None and params.device.type != torch.device(device).type:
        module = module.to(device)
    return module.eval()


def _stream(pieces: Any, write: Callable[[str], None]) -> str:
    """Write each piece as it comes (flushed: the user sees tokens appear); return the text."""
    out = []
    for piece in pieces:
        out.append(piece)
        write(piece)
    return "".join(out)


def _echo_now(text: str) -> None:
    click.echo(text, nl=False)
    sys.stdout.flush()


def _loading_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--device", default="auto", show_default=True,
                      help="cpu, cuda, cuda:1 ... (auto: CUDA when available).")(fn)
    fn = click.option("--trust-code", is_flag=True,
                      help="Allow export artifacts that are programs (as for privet predict).")(fn)
    fn = click.option("--artifact", default=None, metavar="NAME",
                      help="Which artifact of an export to load (default: the bundle's default).")(fn)
    return fn


def _sampling_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--seed", default=None, type=int, help="Seed for reproducible samples.")(fn)
    fn = click.option("--top-p", default=None, type=click.FloatRange(0.0, 1.0, min_open=True),
                      help="Sample only among the most likely tokens covering this probability.")(fn)
    fn = click.option("--top-k", default=None, type=click.IntRange(min=1),
                      help="Sample only among the k most likely tokens.")(fn)
    fn = click.option("--temperature", default=0.8, show_default=True,
                      type=click.FloatRange(min=0.0),
                      help="Sampling temperature; 0 picks the most likely token every time.")(fn)
    fn = click.option("--max-new-tokens", default=200, show_default=True,
                      type=click.IntRange(min=1),
                      help="Stop after this many new tokens (or at end of text).")(fn)
    return fn


@click.command()
@click.argument("target", metavar="RUN", type=PathOrUrl(exists=True, file_okay=False))
@click.option("--prompt", default="", show_default=True, help="Text to continue or to answer.")
@_sampling_options
@click.option("-n", "--num-samples", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many samples to print (separated by blank lines).")
@click.option("--raw", is_flag=True,
              help="Continue PROMPT as given, without the model's chat template.")
@click.option("--echo", is_flag=True, help="Print the prompt before each sample.")
@_loading_options
@click.pass_context
def generate(ctx: click.Context, target: str, prompt: str, max_new_tokens: int, temperature: float,
             top_k: int | None, top_p: float | None, seed: int | None, num_samples: int,
             raw: bool, echo: bool, artifact: str | None, trust_code: bool, device: str) -> None:
    """Generate text after PROMPT with the model of RUN, streamed as it is sampled.

    RUN is a run folder, its export (RUN/export) or an artifact folder in the export
    (RUN/export/merged), local or s3://. A chat model answers PROMPT as a user turn rendered with its chat
    template (--raw: continue the text instead); a plain language model continues it.
    """
    with contextlib.ExitStack() as stack:
        model, module = _load(stack, ctx, target, artifact, trust_code, device)
        _samples(model, module, prompt, num_samples, echo, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, raw=raw)


def _samples(model: Any, module: Any, prompt: str, num_samples: int, echo: bool, *,
             seed: int | None, **sampling: Any) -> None:
    """``num_samples`` continuations of ``prompt``, streamed, separated by blank lines."""
    for i in range(num_samples):
        if i:
            click.echo("\n")
        if echo:
            _echo_now(prompt)
        _stream(model.generate(module, prompt, seed=None if seed is None else seed + i,
                               **sampling), _echo_now)
    click.echo("")


def _load(stack: contextlib.ExitStack, ctx: click.Context, target: str, artifact: str | None,
          trust_code: bool, device: str) -> tuple[Any, Any]:
    """The model and its module on ``device``; an s3:// RUN is read from a private local
    copy that ``stack`` removes when the command ends."""
    from ..staging import staged_path

    local = staged_path(stack, target, "generate")
    model, module = load_for_generation(local, get_host(ctx), artifact=artifact,
                                        trust_code=trust_code)
    return model, _place(module, device)


@click.command()
@click.argument("target", metavar="RUN", type=PathOrUrl(exists=True, file_okay=False))
@click.option("--system", default=None, help="A system message that opens the conversation.")
@_sampling_options
@_loading_options
@click.pass_context
def chat(ctx: click.Context, target: str, system: str | None, max_new_tokens: int,
         temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
         artifact: str | None, trust_code: bool, device: str) -> None:
    """Chat with the model of RUN (a run folder or its export); replies stream as sampled.

    One message per line on standard input. /reset forgets the conversation; /exit, /quit
    or end of input (Ctrl-D) ends it. The whole conversation is rendered with the model's
    chat template at every turn, as in training.
    """
    with contextlib.ExitStack() as stack:
        model, module = _load(stack, ctx, target, artifact, trust_code, device)
        _converse(model, module, system, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_k=top_k, top_p=top_p, seed=seed)


def _converse(model: Any, module: Any, system: str | None, *, seed: int | None,
              **sampling: Any) -> None:
    """The chat loop: one user message per line of standard input, replies streamed."""
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"chatting with {model.name}; /reset forgets, /exit or Ctrl-D ends", err=True)
    turn = 0
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        text = line.strip()
        if not line or text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(opening)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        reply = _stream(model.generate(module, list(messages), **sampling,
                                       seed=None if seed is None else seed + turn), _echo_now)
        click.echo("")
        messages.append({"role": "assistant", "content": reply})
        turn += 1
