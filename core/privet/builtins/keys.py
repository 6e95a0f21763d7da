"""Built-in key providers: ``env:NAME``, ``file:PATH`` and ``command:...``.

Each returns the 32-byte key for ``security.encryption.key`` (base64 text where the key
is text). Registered through ``register_key_providers`` like any plugin's provider.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

from ..components import KeyProvider
from ..crypto import KeyMissingError, decode_key
from ..hookspecs import hookimpl

#: Longest a key command may run: a vault or KMS client answers in seconds.
COMMAND_TIMEOUT_S = 60


class EnvKey(KeyProvider):
    """The key in an environment variable, as base64 text (``env:PRIVET_KEY``)."""

    def load(self, argument: str, base_dir: Path) -> bytes:
        value = os.environ.get(argument)
        if not value:
            raise KeyMissingError(f"key missing: environment variable {argument} is not set")
        return decode_key(value, f"environment variable {argument}")


class FileKey(KeyProvider):
    """The key in a file readable by its owner only (``file:keys/run.key``, base64 text).

    A key file that group or others may read or write is refused, as ssh refuses such a
    private key: anyone who can read it can read every run it protects.
    """

    def load(self, argument: str, base_dir: Path) -> bytes:
        path = Path(argument).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise KeyMissingError(f"{path}: key missing: no such key file") from None
        except OSError as err:
            raise KeyMissingError(f"{path}: key missing: {err.strerror or err}") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyMissingError(f"{path}: key missing: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyMissingError(f"{path}: refused: key file permissions {mode:04o} are wider than "
                                  f"0600 (group or others can read it); run: chmod 600 {path}")
        with open(path, "rb") as fh:
            return decode_key(fh.read(4096), str(path), raw_ok=True)


class CommandKey(KeyProvider):
    """The key printed by a command (``command:vault kv get -field=key secret/privet``).

    The command is split like a shell line but run without a shell; its standard output
    is the base64 key. It comes from the pipeline file, which is trusted to name code.
    """

    def load(self, argument: str, base_dir: Path) -> bytes:
        argv = shlex.split(argument)
        if not argv:
            raise KeyMissingError("key missing: command: names no command")
        try:
            done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT_S,
                                  cwd=base_dir, stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KeyMissingError(f"key missing: key command {argv[0]!r} failed: {err}") from None
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise KeyMissingError(f"key missing: key command {argv[0]!r} exited with "
                                  f"{done.returncode}" + (f": {why[-1][:200]}" if why else ""))
        return decode_key(done.stdout, f"output of key command {argv[0]!r}")


@hookimpl
def register_key_providers(register):
    register("env", EnvKey)
    register("file", FileKey)
    register("command", CommandKey)
