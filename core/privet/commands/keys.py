"""``privet keys new-signing KEYFILE``: an Ed25519 key pair for signing export bundles."""

from __future__ import annotations

import click


@click.group()
def keys() -> None:
    """Make keys: signing keys for 'privet export --sign'."""


@keys.command("new-signing")
@click.argument("keyfile", type=click.Path(dir_okay=False))
def new_signing(keyfile: str) -> None:
    """Write a new Ed25519 private key to KEYFILE (PEM, 0600) and its public key to
    KEYFILE.pub (give that to whoever runs 'privet predict --verify-key')."""
    from ..signing import new_signing_key

    private, public = new_signing_key(keyfile)
    click.echo(f"signing key: {private}\npublic key:  {public}")
