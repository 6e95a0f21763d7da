"""``privet audit verify LOG``: check an audit log written by ``privet serve``.

Exit 0 with one summary line when every entry verifies; exit 2 with one line naming the
file and the first bad line otherwise (edited, deleted, inserted, reordered, bad signature).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..audit.entry import DEFAULT_KEY_REF
from ..cli import get_host


@click.group()
def audit() -> None:
    """Check the tamper-evident audit logs that 'privet serve' writes."""


@audit.command("verify")
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--audit-key", default=DEFAULT_KEY_REF, show_default=True, metavar="REF",
              help="The log's HMAC key: env:NAME, file:PATH or command:... (never the key itself).")
@click.option("--verify-key", default=None, metavar="PUBKEY",
              help="Ed25519 public key (PEM, KEY.pub of 'privet keys new-signing'): also check "
                   "every checkpoint's signature and cadence.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def verify(ctx: click.Context, log: str, audit_key: str, verify_key: str | None,
           as_json: bool) -> None:
    """Verify LOG and its rotated files (LOG.1, LOG.2, ...): every entry's HMAC, the hash
    chain, and with --verify-key the signed checkpoints."""
    from ..audit import load_verify_key, verify_log
    from ..crypto import load_key

    key = load_key(audit_key, get_host(ctx).catalog, Path.cwd(), where="--audit-key")
    public = load_verify_key(verify_key) if verify_key else None
    summary = verify_log(log, hmac_key=key, public_key=public)
    click.echo(json.dumps(summary.as_dict(), sort_keys=True) if as_json else summary.line())
