"""An unpickler that rebuilds only the exact objects it is given.

Python's pickle calls ``find_class(module, name)`` for every global a stream names, and a
stream can then *call* what it got (``REDUCE``): a pickle that names ``os.system``,
``builtins.eval`` or ``torch.load`` runs code on load. The standard defence ("Restricting
Globals" in the :mod:`pickle` docs) is a ``find_class`` that returns only what is allowed.

Here the allowlist is a table of exact ``(module, name)`` pairs mapped to the objects to
return: never a module prefix, and never a function of the library the stream names (a
helper that a format needs, like the layout lookup of torch checkpoints, is replaced by a
local function that only accepts a name). The objects are classes of plain data
(dataclasses, enums, ``torch.Size``) and constants (dtypes). Persistent ids are refused.

:func:`dcp_metadata_allowlist` is the table for ``torch.distributed.checkpoint``'s
``.metadata`` file, which DCP writes with plain pickle.
"""

from __future__ import annotations

import functools
import io
import pickle
from typing import IO, Any, Mapping

Allowlist = Mapping[tuple[str, str], Any]


class RefusedPickle(pickle.UnpicklingError):
    """The stream names a global that is not on the allowlist (or a persistent id)."""


class AllowlistUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only the allowlist's own objects."""

    def __init__(self, fh: IO[bytes], allowed: Allowlist) -> None:
        super().__init__(fh)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise RefusedPickle(f"refused to unpickle {module}.{name} (not an allowed "
                                f"class)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("refused to unpickle a persistent id")


def load_allowlisted(fh: IO[bytes] | bytes, allowed: Allowlist) -> Any:
    """Unpickle ``fh`` (a binary file or bytes), rebuilding only the allowlist's objects."""
    if isinstance(fh, (bytes, bytearray)):
        fh = io.BytesIO(bytes(fh))
    return AllowlistUnpickler(fh, allowed).load()


def _torch_layout(name: Any) -> Any:
    """Stand-in for ``torch.serialization._get_layout``: a layout by its name, nothing else."""
    import torch

    layouts = {str(v): v for v in vars(torch).values() if isinstance(v, torch.layout)}
    if not isinstance(name, str) or name not in layouts:
        raise RefusedPickle(f"refused to unpickle layout {name!r}")
    return layouts[name]


_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"),
    "torch.distributed.checkpoint.filesystem": ("_StorageInfo",),
}
_PLAIN_CLASSES = {
    "collections": ("OrderedDict",),
    "builtins": ("set", "frozenset", "slice"),
    "pathlib": ("PosixPath", "PurePosixPath", "PureWindowsPath"),
}


@functools.lru_cache(maxsize=1)
def dcp_metadata_allowlist() -> dict[tuple[str, str], Any]:
    """Exact classes and constants a ``torch.distributed.checkpoint`` ``.metadata`` holds.

    Names missing from the installed torch are left out (older and newer versions differ).
    """
    import importlib

    import torch

    table: dict[tuple[str, str], Any] = {}
    for group in (_DCP_CLASSES, _PLAIN_CLASSES):
        for module_name, names in group.items():
            module = importlib.import_module(module_name)
            for name in names:
                obj = getattr(module, name, None)
                if isinstance(obj, type):  # classes only: never a function
                    table[(module_name, name)] = obj
    table[("torch", "Size")] = torch.Size
    for name, value in vars(torch).items():  # constants: dtypes, layouts, memory formats
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            table[("torch", name)] = value
    table[("torch.serialization", "_get_layout")] = _torch_layout
    return table
