"""The federation's run folder layout and the weight files clients and coordinator swap.

One place names every path, so the coordinator and the client processes agree::

    RUN/federation.yaml            the federation file as it was started
    RUN/manifest.json              where it came from (base folder, digest, times)
    RUN/tensorboard/               the global model's metrics, one step per round
    RUN/report.json                the federation's report (updated each round)
    RUN/round-NNN/updates/C.*      client C's weights and example count for round NNN
    RUN/round-NNN/global.safetensors   the aggregate of round NNN
    RUN/round-NNN/report.json      the round's per-client and global metrics
    RUN/round-NNN/committed.json   the marker: the round is complete (written last)
    RUN/clients/C/round-NNN/       client C's own run folder of that round
    RUN/clients/C/final/           a run folder holding the best global weights (export it)

Weight files are safetensors written and read through :class:`privet.storage.Storage`,
so they are sealed when the federation has an encryption key.
"""

from __future__ import annotations

from typing import Any

from ..storage import Storage

GLOBAL = "global.safetensors"
MARKER = "committed.json"


def round_dir(r: int) -> str:
    """The folder of round ``r`` (1-based) inside the federation's run folder."""
    return f"round-{r:03d}"


def update_name(client: str) -> str:
    return f"updates/{client}.safetensors"


def update_info(client: str) -> str:
    return f"updates/{client}.json"


def client_dir(client: str) -> str:
    return f"clients/{client}"


def save_tensors(storage: Storage, name: str, tensors: dict[str, Any]) -> None:
    """``tensors`` as safetensors bytes, written atomically (sealed with a key)."""
    from safetensors.torch import save

    storage.write_bytes(name, save({k: v.contiguous() for k, v in tensors.items()}))


def load_tensors(storage: Storage, name: str) -> dict[str, Any]:
    """The tensors of a safetensors file (authenticated first when sealed); no pickles."""
    from safetensors.torch import load

    return load(storage.read_bytes(name))


def digest(storage: Storage, name: str) -> str:
    """sha256 of the file's content (decrypted and authenticated first when sealed), which
    the commit marker records: a global weights file swapped after its round is refused."""
    import hashlib

    return hashlib.sha256(storage.read_bytes(name)).hexdigest()
