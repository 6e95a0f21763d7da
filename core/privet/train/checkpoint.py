"""Checkpoints: atomic folders that load without executing pickled code.

``checkpoints/step-00000123/`` holds ``model.safetensors`` (weights), ``state.pt``
(optimizer, scheduler, scaler, torch RNG: tensors and plain containers, loaded with
``weights_only=True``) and ``state.json`` (position in the data, python/numpy RNG,
early-stopping state). The folder is written under a temp name, fsynced and renamed:
a kill or a full disk mid-write leaves the previous checkpoints intact. In a run folder on
an object store (no rename there) the storage module uploads the step object by object
with ``state.json`` last (a sharded step: each rank its own shard files, then rank 0 the
rest), and old steps are pruned only after that marker landed; resume fetches the newest
step whose marker exists, every shard of it on every rank. In an encrypted
run folder every file is serialised to bytes in memory and sealed by the storage module;
otherwise the libraries write the files themselves, as fast as before.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

from ..crypto import AuthenticationError, KeyMissingError
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
    """The one owner of checkpoint I/O: writing, listing, pruning and restoring.

    Single-process and DDP runs write one folder from rank 0; FSDP2 runs write their
    shards from every rank with torch.distributed.checkpoint (sealed through
    :mod:`privet.train.sealed_dcp` in an encrypted run) and rank 0 completes the
    folder. Either way the folder is built under a temp name and ``state.json`` (the
    marker) is written last, so a folder without it is never taken as complete; old
    steps are pruned only after the new one is in place.
    """

    def __init__(self, storage: Storage, keep_last: int = 2, folder: str = "checkpoints", *,
                 is_main: bool = True, model: Any = None) -> None:
        self.storage = storage
        self.model = model  # the Model component: it may keep only a trainable part
        self.folder = folder
        self.keep_last = max(1, keep_last)
        self.is_main = is_main

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (temp folders are ignored)."""
        out = []
        for name in self.storage.listdir(self.folder):
            m = _STEP.match(name)
            if m and self.storage.exists(f"{self.folder}/{name}/state.json"):
                out.append(int(m.group(1)))
        return sorted(out)

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def path(self, step: int) -> Path:
        return self.storage.path(self.folder) / f"step-{step:08d}"

    def clean_partial(self) -> None:
        """Remove what killed writers left: temp checkpoint folders and a temp ``best/``."""
        self.storage.clean_partial(self.folder)
        self.storage.clean_partial()

    # -- writing --------------------------------------------------------------------------

    def save(self, step: int, module: Any, tensors: dict[str, Any], plain: dict[str, Any]) -> Path:
        """Write one step (rank 0 of an unsharded run), then prune the old ones."""
        import torch

        self.storage.clean_partial(self.folder)
        with self.storage.atomic_dir(f"{self.folder}/step-{step:08d}") as tmp:
            out = self.storage.sub(tmp)
            write_weights(tmp / "model.safetensors", module, self.model, storage=out)
            if out.encrypts("state.pt"):
                buffer = io.BytesIO()
                torch.save(tensors, buffer)
                out.write_bytes("state.pt", buffer.getbuffer())
            else:
                torch.save(tensors, tmp / "state.pt")
            # state.json last: its presence marks the checkpoint complete
            out.write_text("state.json", json.dumps(plain))
        # on an object store the step went up object by object, state.json last (storage.py);
        # the run's other files follow, then old steps go: only after the new marker landed
        self.storage.flush()
        self._prune()
        return self.path(step)

    def save_sharded(self, step: int, module: Any, optimizer: Any, tensors: dict[str, Any],
                     plain: dict[str, Any]) -> Path:
        """FSDP: a collective. Every rank writes its shards into a temp step folder; rank 0
        adds the rest, renames it and prunes.

        On an object store (a mirrored working copy per process or per node) each rank
        uploads its own shard files to the step's prefix; after a barrier rank 0 uploads
        ``.metadata``, ``state.pt`` and the marker ``state.json`` last, so a step killed
        mid-upload has no marker and is never resumed from.
        """
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import get_state_dict

        name = f"step-{step:08d}"
        tmp_rel = f"{self.folder}/.tmp-{name}"
        remote = self.storage.remote is not None
        if self.is_main:
            self.storage.clean_partial(self.folder)
            if remote:  # a copy of this step from an earlier attempt goes first, marker first
                self.storage.remove(f"{self.folder}/{name}")
            self.storage.makedirs(tmp_rel)
        dist.barrier()
        if remote:  # the working copy of this rank (another node's, a resumed rank's own)
            self.storage.makedirs(tmp_rel)
        model_sd, optim_sd = get_state_dict(module, optimizer)
        keys = _trainable_keys(self.model, module)
        if keys is not None:  # an adapter run: its shards hold the adapter, not the frozen base
            model_sd = {k: v for k, v in model_sd.items() if k in keys}
            plain = dict(plain, trainable_part=True)
        self._write_shards(tmp_rel, model_sd, optim_sd, step)
        if remote and not self.is_main:
            self._send_shards(tmp_rel, name, dist.get_rank())
        dist.barrier()
        if self.is_main:
            self._complete_sharded(tmp_rel, name, tensors, dict(plain, sharded=True), step)
        dist.barrier()
        if remote and not self.is_main and self.storage.exists(tmp_rel):
            self.storage.remove(tmp_rel)  # a working copy of its own: the shards are on the store
        return self.path(step)

    def _write_shards(self, tmp_rel: str, model_sd: dict[str, Any], optim_sd: dict[str, Any],
                      step: int) -> None:
        """This rank's part through torch.distributed.checkpoint (sealed in an encrypted run)."""
        import torch.distributed.checkpoint as dcp

        from .sealed_dcp import sealed_writer

        try:
            shards = self.storage.path(f"{tmp_rel}/sharded")
            if self.storage.cipher is not None:  # every shard sealed through the storage module
                dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=sealed_writer(shards))
            else:
                dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(shards))
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"cannot write {self.path(step)}: {err}; the previous "
                                  f"checkpoints are intact") from err

    def _send_shards(self, tmp_rel: str, name: str, rank: int) -> None:
        """Upload the shard files DCP wrote for ``rank`` (``__RANK_*``) under the step's name."""
        for file in self.storage.listdir(f"{tmp_rel}/sharded"):
            if file.startswith(f"__{rank}_"):
                self.storage.send(f"{tmp_rel}/sharded/{file}",
                                  as_rel=f"{self.folder}/{name}/sharded/{file}")

    def _complete_sharded(self, tmp_rel: str, name: str, tensors: dict[str, Any],
                          plain: dict[str, Any], step: int) -> None:
        """Rank 0: ``state.pt`` and the marker, the step in place (and on the store), pruning."""
        import torch

        tmp = self.storage.sub(tmp_rel)
        try:
            if tmp.encrypts("state.pt"):
                buffer = io.BytesIO()
                torch.save(tensors, buffer)
                tmp.write_bytes("state.pt", buffer.getbuffer())
            else:
                torch.save(tensors, tmp.path("state.pt"))
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"cannot write {self.path(step)}: {err}; the previous "
                                  f"checkpoints are intact") from err
        tmp.write_text("state.json", json.dumps(plain))
        final = f"{self.folder}/{name}"
        if self.storage.remote is None:
            self.storage.remove(final)
            self.storage.rename(tmp_rel, final)
        else:
            self.storage.rename(tmp_rel, final, send=False)
            self._send_shards(final, name, 0)
            for file in self.storage.listdir(f"{final}/sharded"):  # the other ranks sent theirs
                if not file.startswith("__0_"):
                    self.storage.send(f"{final}/sharded/{file}",
                                      sent_by_another=file.startswith("__"))
            self.storage.send(f"{final}/state.pt")
            self.storage.send(f"{final}/state.json")  # the marker, last
        self._prune()

    def save_best(self, module: Any, full_state: dict[str, Any] | None) -> None:
        """The best epoch's full weights, for export and ``load_trained`` (rank 0)."""
        with self.storage.atomic_dir("best") as tmp:
            out = self.storage.sub(tmp)
            if full_state is not None:  # gathered from FSDP shards: keep the trainable part
                keys = _trainable_keys(self.model, module)
                part = full_state if keys is None else {k: v for k, v in full_state.items() if k in keys}
                _save_tensors(out, "model.safetensors", {k: v.contiguous() for k, v in part.items()},
                              None if keys is None else {"privet": "trainable_part"})
            else:
                write_weights(tmp / "model.safetensors", module, self.model, storage=out)

    def _prune(self) -> None:
        steps = self.steps()
        for old in steps[: -self.keep_last]:
            self.storage.remove(f"{self.folder}/step-{old:08d}")
        if self.storage.remote is None or not steps:
            return
        # a resumed run's working copy holds only the step it fetched: older steps (and
        # killed uploads) below the ones kept exist only on the store
        oldest_kept = steps[-self.keep_last:][0]
        for name in self.storage.remote_children(self.folder):
            m = _STEP.match(name)
            if m and int(m.group(1)) < oldest_kept:
                self.storage.remove(f"{self.folder}/{name}")

    # -- reading --------------------------------------------------------------------------

    @staticmethod
    def load(path: Path, module: Any, model: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load weights into ``module``; return (tensor state, JSON state). Never unpickles code."""
        path = Path(path)
        read_weights(path / "model.safetensors", module, model, storage=Storage(path))
        return _load_state(path)

    @staticmethod
    def load_sharded(path: Path, module: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """FSDP: load the shards into ``module`` and ``optimizer`` (a collective).

        A checkpoint of a trainable part (an adapter) loads that part; the frozen rest
        stays as ``Model.build`` loaded it from the base weights.
        """
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                             set_state_dict)

        path = Path(path)
        tensors, plain = _load_state(path)
        model_sd, optim_sd = get_state_dict(module, optimizer)
        partial = bool(plain.get("trainable_part"))
        if partial:
            model_sd = _stored_part(path, module, model_sd)
        state = {"model": model_sd, "optim": optim_sd}
        dcp_load_safely(state, str(path / "sharded"))
        set_state_dict(module, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=StateDictOptions(strict=not partial))
        return tensors, plain


def _trainable_keys(model: Any, module: Any) -> set[str] | None:
    """The state-dict keys ``model`` keeps of ``module`` (its trainable part), or ``None`` for all."""
    if not _keeps_a_part(model):
        return None
    part = model.trainable_state_dict(module)
    return None if part is None else set(part)


def _stored_part(path: Path, module: Any, model_sd: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``model_sd`` a trainable-part checkpoint holds; every parameter that
    trains must be among them (else the checkpoint is from another adapter)."""
    metadata = safe_dcp_reader(str(path / "sharded")).read_metadata()
    stored = {k[len("model."):] for k in metadata.state_dict_metadata if k.startswith("model.")}
    training = {name for name, p in module.named_parameters() if p.requires_grad}
    missing = sorted(training - stored)
    unexpected = sorted(stored - set(model_sd))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the sharded checkpoint does not match this model's trainable "
                              f"weights (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                              f"resume with the same pipeline file")
    return {k: v for k, v in model_sd.items() if k in stored}


def _keeps_a_part(model: Any) -> bool:
    """Whether ``model`` overrides :meth:`privet.Model.trainable_state_dict`."""
    from ..components import Model

    return model is not None and type(model).trainable_state_dict is not Model.trainable_state_dict


def _save_tensors(storage: Storage, name: str, tensors: dict[str, Any],
                  metadata: dict[str, str] | None) -> None:
    """safetensors into ``storage``: sealed bytes when it encrypts, else a file safetensors writes."""
    from safetensors.torch import save, save_file

    if storage.encrypts(name):
        storage.write_bytes(name, save(tensors, metadata=metadata))
    else:
        save_file(tensors, str(storage.path(name)), metadata=metadata)


def _load_tensors(storage: Storage, name: str) -> dict[str, Any]:
    """The inverse of :func:`_save_tensors` (memory-mapped when the file is plaintext)."""
    from safetensors.torch import load, load_file

    if storage.encrypts(name):
        return load(storage.read_bytes(name))
    return load_file(str(storage.local_file(name)))  # plaintext: safetensors maps it


def write_weights(path: Path, module: Any, model: Any = None, *,
                  storage: Storage | None = None) -> None:
    """``module``'s weights as safetensors: all of them, or the part the model trains.

    ``storage`` is the folder ``path`` is in (its cipher seals the file); by default the
    folder's own Storage.
    """
    from safetensors.torch import _remove_duplicate_names, save_model

    path = Path(path)
    storage = Storage(path.parent) if storage is None else storage
    part = model.trainable_state_dict(module) if _keeps_a_part(model) else None
    if part is not None:
        _save_tensors(storage, path.name, {k: v.detach().contiguous().cpu() for k, v in part.items()},
                      {"privet": "trainable_part"})
        return
    if not storage.encrypts(path.name):
        save_model(module, str(storage.path(path.name)))
        return
    # sealed: what safetensors' save_model does, into bytes (tied tensors stored once)
    state = module.state_dict()
    metadata: dict[str, str] = {}
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata.setdefault(name, kept)
            del state[name]
    _save_tensors(storage, path.name, {k: v.contiguous() for k, v in state.items()},
                  metadata or None)


def read_weights(path: Path, module: Any, model: Any = None, *,
                 storage: Storage | None = None) -> None:
    """The inverse of :func:`write_weights`; a mismatch is one :class:`CheckpointError`.

    A file that does not authenticate (encrypted runs) is the storage module's one-line
    error naming it; nothing is loaded into ``module`` then.
    """
    path = Path(path)
    storage = Storage(path.parent) if storage is None else storage
    try:
        tensors = _load_tensors(storage, path.name)
        if _keeps_a_part(model):
            model.load_trainable_state_dict(module, tensors)
            return
        missing, unexpected = _load_into(module, tensors)
    except (AuthenticationError, KeyMissingError):
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load weights ({err}); the checkpoint is damaged or "
                              f"from another model") from err
    if unexpected or [k for k in missing if not _is_tied(module, k)]:
        raise CheckpointError(f"{path.parent}: weights do not match the model (missing "
                              f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}); "
                              f"resume with the same pipeline file")


def _load_into(module: Any, tensors: dict[str, Any]) -> tuple[set[str], list[str]]:
    """``module.load_state_dict(tensors, strict=False)`` counting tied names as present,
    as safetensors' load_model does; returns (missing, unexpected)."""
    from safetensors.torch import _remove_duplicate_names

    to_remove = _remove_duplicate_names(module.state_dict(), preferred_names=tensors.keys())
    missing_list, unexpected = module.load_state_dict(tensors, strict=False)
    missing = set(missing_list)
    for group in to_remove.values():
        for name in group:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    return missing, unexpected


def _load_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``state.pt`` (tensors and plain data only) and ``state.json``, checked for shape."""
    import pickle

    import torch

    storage = Storage(path)
    try:
        if storage.encrypts("state.pt"):  # decrypted (and authenticated) whole, in memory
            source: Any = io.BytesIO(storage.read_bytes("state.pt"))
        else:
            source = storage.local_file("state.pt")
        tensors = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path / 'state.pt'}: refused to load: it contains pickled "
                              f"objects other than tensors and plain data") from err
    except (AuthenticationError, KeyMissingError):
        raise
    except Exception as err:
        raise CheckpointError(f"{path / 'state.pt'}: cannot load ({err}); the checkpoint is "
                              f"damaged") from err
    try:
        plain = json.loads(storage.read_text("state.json"))
    except (AuthenticationError, KeyMissingError):
        raise
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / 'state.json'}: cannot read ({err})") from err
    problem = _state_problem(tensors, plain)
    if problem:
        raise CheckpointError(f"{path / 'state.json'}: {problem}; the checkpoint is damaged or "
                              f"not Privet's")
    return tensors, plain


def _state_problem(tensors: Any, plain: Any) -> str | None:
    if not isinstance(tensors, dict) or "rng" not in tensors:
        return "state.pt holds no RNG state"
    if not isinstance(plain, dict):
        return "not a JSON object"
    if not isinstance(plain.get("loop"), dict):
        return "no 'loop' object"
    if not isinstance(plain.get("rng"), dict) or not {"python", "numpy"} <= set(plain["rng"]):
        return "no 'rng' object with python and numpy states"
    return None


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
    load. Only exact classes and constants (DCP's metadata dataclasses, ``torch.Size``,
    dtypes) are rebuilt: see :func:`privet.unpickle.dcp_metadata_allowlist`.
    """

    @classmethod
    def load(cls, fh: Any) -> Any:
        from ..unpickle import dcp_metadata_allowlist, load_allowlisted

        return load_allowlisted(fh, dcp_metadata_allowlist())


class _WeightsOnlyBytes:
    """Wraps a DCP load planner so non-tensor values never reach a full unpickler.

    DCP's default planner loads each non-tensor value (optimizer hyper-parameters, steps)
    with ``torch.load(weights_only=False)``. Here the value is first loaded with
    ``weights_only=True`` (tensors and plain containers only), then handed on re-saved.
    """

    def __init__(self, planner: Any) -> None:
        self._planner = planner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def load_bytes(self, read_item: Any, value: Any) -> None:
        import io

        import torch

        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"refused to load checkpoint value {read_item.dest_index.fqn!r}: "
                                  f"it holds objects other than tensors and plain data") from err
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        self._planner.load_bytes(read_item, clean)


def _check_storage_paths(metadata: Any, meta_path: Any) -> None:
    """Every data file the metadata names is a plain file name inside the checkpoint."""
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or not rel or "/" in rel or "\\" in rel or rel in (".", ".."):
            raise CheckpointError(f"{meta_path}: refused checkpoint metadata: data file {rel!r} "
                                  f"is not a file name inside the checkpoint folder")


def safe_dcp_reader(path: str) -> Any:
    """A FileSystemReader that cannot execute code or read outside ``path``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            meta_path = self._get_metadata_path(rank)
            try:
                with self.fs.create_stream(meta_path, "rb") as fh:
                    metadata = _MetadataUnpickler.load(fh)
            except Exception as err:
                raise CheckpointError(f"{meta_path}: refused to load checkpoint metadata ({err})") from err
            if not isinstance(metadata, Metadata):
                raise CheckpointError(f"{meta_path}: refused checkpoint metadata: a "
                                      f"{type(metadata).__name__}, not DCP Metadata")
            _check_storage_paths(metadata, meta_path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            return super().read_data(plan, _WeightsOnlyBytes(planner))

    reader = SafeReader(path)
    if Storage(Path(path)).cipher is not None:  # sealed shards: decrypted through the storage module
        from .sealed_dcp import use_sealed_files

        use_sealed_files(reader, Path(path))
    return reader


def dcp_load_safely(state: dict[str, Any], path: str) -> None:
    """``dcp.load`` into ``state`` through :func:`safe_dcp_reader`.

    DCP wraps every rank's failure in a ``CheckpointException`` (a BaseException); a
    refusal or a damaged file becomes one :class:`CheckpointError` naming the first cause.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=safe_dcp_reader(path))
    except CheckpointException as err:
        causes = [f[0] if isinstance(f, tuple) else f for f in err.failures.values()]
        first = next((c for c in causes if isinstance(c, CheckpointError)), causes[0] if causes else err)
        if isinstance(first, CheckpointError):
            raise CheckpointError(str(first)) from err
        raise CheckpointError(f"{path}: cannot load the sharded checkpoint "
                              f"({type(first).__name__}: {first})") from err
