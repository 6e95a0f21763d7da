"""``privet decrypt FILE --key REF``: the plaintext of one sealed file, to standard output.

For what Privet seals and a person must read: ``privet predict --out`` of an encrypted
bundle, or one file of an encrypted run. The file is authenticated whole before a byte
is written, so a changed or truncated file yields one error line and no output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..cli import get_host


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, metavar="REF",
              help="Key reference: env:NAME, file:PATH or command:... (never the key itself).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the plaintext here (0600) instead of standard output.")
@click.pass_context
def decrypt(ctx: click.Context, file: str, key: str, out: str | None) -> None:
    """Decrypt FILE, sealed by Privet with the key that REF names (AES-256-GCM chunks)."""
    from ..crypto import Cipher, load_key
    from ..storage import Storage

    cipher = Cipher(load_key(key, get_host(ctx).catalog, Path.cwd(), where="--key"))
    plain = cipher.decrypt(Path(file).read_bytes(), name=file)
    if out:
        Storage(Path(out).parent, cipher=None).write_bytes(Path(out).name, plain)
    else:
        sys.stdout.buffer.write(plain)
        sys.stdout.buffer.flush()
