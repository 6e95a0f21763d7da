"""``privet generate RUN --prompt TEXT``: sample text from a trained ``text.gpt`` run."""

from __future__ import annotations

import click
from privet import UsageError, load_trained


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", default="", show_default=True, help="Text to continue.")
@click.option("--max-new-tokens", default=100, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many new tokens (or at end of text).")
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(min=0.0),
              help="Sampling temperature; 0 picks the most likely token every time.")
@click.option("--top-k", default=None, type=click.IntRange(min=1),
              help="Sample only among the k most likely tokens.")
@click.option("--top-p", default=None, type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Sample only among the most likely tokens covering this probability.")
@click.option("--seed", default=None, type=int, help="Seed for reproducible samples.")
@click.option("-n", "--num-samples", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many samples to print (separated by blank lines).")
@click.pass_context
def generate(ctx: click.Context, run: str, prompt: str, max_new_tokens: int, temperature: float,
             top_k: int | None, top_p: float | None, seed: int | None, num_samples: int) -> None:
    """Continue PROMPT with the text.gpt model trained in run folder RUN."""
    # load_trained builds the plugin host itself (honouring PRIVET_*_PLUGINS); torch is
    # imported inside it, so this command stays cheap to register
    model, module = load_trained(run)
    if not hasattr(model, "generate"):
        raise UsageError(f"run {run} trained model {model.name!r}, which does not generate text; "
                         f"privet generate works with text.gpt runs")
    for i in range(num_samples):
        if i:
            click.echo("")
        click.echo(model.generate(module, prompt, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  seed=None if seed is None else seed + i))
