"""Checkpoints: atomic folders that load without executing pickled code.

``checkpoints/step-00000123/`` holds ``model.safetensors`` (weights), ``state.pt``
(optimizer, scheduler, scaler, torch RNG: tensors and plain containers, loaded with
``weights_only=True``) and ``state.json`` (position in the data, python/numpy RNG,
early-stopping state). The folder is written under a temp name, fsynced and renamed:
a kill or a full disk mid-write leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..storage import Storage

_STEP = re.compile(r"^step-(\d+)$")


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor part, JSON part) of every RNG a run uses."""
    import numpy as np
    import torch

    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    plain = {"python": [version, list(state), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, plain


def restore_rng(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


class CheckpointManager:
    """Writes, lists, prunes and loads the checkpoints of one run (rank 0 writes)."""

    def __init__(self, storage: Storage, keep_last: int = 2, folder: str = "checkpoints") -> None:
        self.storage = storage
        self.folder = folder
        self.keep_last = max(1, keep_last)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (temp folders are ignored)."""
        out = []
        for name in self.storage.listdir(self.folder):
            m = _STEP.match(name)
            if m and (self.storage.path(self.folder) / name / "state.json").exists():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def path(self, step: int) -> Path:
        return self.storage.path(self.folder) / f"step-{step:08d}"

    def save(self, step: int, module: Any, tensors: dict[str, Any], plain: dict[str, Any]) -> Path:
        import torch
        from safetensors.torch import save_model

        self.storage.clean_partial(self.folder)
        with self.storage.atomic_dir(f"{self.folder}/step-{step:08d}") as tmp:
            save_model(module, str(tmp / "model.safetensors"))
            torch.save(tensors, tmp / "state.pt")
            # state.json last: its presence marks the checkpoint complete
            (tmp / "state.json").write_text(json.dumps(plain), encoding="utf-8")
        for old in self.steps()[: -self.keep_last]:
            self.storage.remove(f"{self.folder}/step-{old:08d}")
        return self.path(step)

    @staticmethod
    def load(path: Path, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load weights into ``module``; return (tensor state, JSON state). Never unpickles code."""
        import pickle

        import torch
        from safetensors.torch import load_model

        path = Path(path)
        try:
            missing, unexpected = load_model(module, str(path / "model.safetensors"), strict=False)
        except Exception as err:
            raise CheckpointError(f"{path / 'model.safetensors'}: cannot load weights ({err}); "
                                  f"the checkpoint is damaged or from another model") from err
        if unexpected or [k for k in missing if not _is_tied(module, k)]:
            raise CheckpointError(f"{path}: weights do not match the model (missing "
                                  f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}); "
                                  f"resume with the same pipeline file")
        try:
            tensors = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path / 'state.pt'}: refused to load: it contains pickled "
                                  f"objects other than tensors and plain data") from err
        except Exception as err:
            raise CheckpointError(f"{path / 'state.pt'}: cannot load ({err}); the checkpoint is "
                                  f"damaged") from err
        try:
            plain = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path / 'state.json'}: cannot read ({err})") from err
        return tensors, plain


def _is_tied(module: Any, key: str) -> bool:
    """safetensors' save_model drops tied duplicates; those keys are fine to miss."""
    params = dict(module.named_parameters(remove_duplicate=False))
    target = params.get(key)
    if target is None:
        return False
    return any(p is target for k, p in params.items() if k != key)


class _MetadataUnpickler:
    """Unpickles torch.distributed.checkpoint metadata, refusing anything else.

    DCP stores its ``.metadata`` with plain pickle; a tampered file could run code on
    load. Only the dataclasses of DCP's metadata and a few torch/builtin types are
    allowed.
    """

    ALLOWED_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
    ALLOWED = {("torch", "Size"), ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"),
               ("torch", "float64"), ("torch", "int64"), ("torch", "int32"), ("torch", "uint8"),
               ("torch", "bool"), ("torch", "int8"), ("torch", "int16"), ("torch", "strided"),
               ("torch", "contiguous_format"), ("collections", "OrderedDict"),
               ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
               ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
               ("pathlib", "PureWindowsPath"),
               ("torch.serialization", "_get_layout"), ("torch._utils", "_rebuild_tensor_v2")}

    @classmethod
    def load(cls, fh: Any) -> Any:
        import importlib
        import pickle

        allowed_modules = cls.ALLOWED_MODULES
        allowed = cls.ALLOWED

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module.startswith(allowed_modules) or (module, name) in allowed:
                    return getattr(importlib.import_module(module), name)
                raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}")

        return Restricted(fh).load()


def safe_dcp_reader(path: str) -> Any:
    """A FileSystemReader whose metadata loading cannot execute code."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            meta_path = self._get_metadata_path(rank)
            try:
                with self.fs.create_stream(meta_path, "rb") as fh:
                    metadata = _MetadataUnpickler.load(fh)
            except Exception as err:
                raise CheckpointError(f"{meta_path}: refused to load checkpoint metadata ({err})") from err
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)
