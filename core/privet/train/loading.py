"""Loading a trained run back: the model component with its fitted state and the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PrivetError
from ..storage import Storage


def load_trained(run_dir: str | Path, host: Any | None = None, *, weights: str = "best") -> tuple[Any, Any]:
    """Return ``(model_component, module)`` of a finished or stopped run, in eval mode.

    ``weights`` is ``best`` (the best validation epoch, falling back to the last
    checkpoint) or ``last``. Nothing is unpickled: weights come from safetensors and the
    fitted state from JSON.
    """
    from ..crypto import open_stored_run
    from ..pipeline import prepare_config
    from ..runs import load_run

    stored = load_run(run_dir)
    run_dir = stored.run_dir
    host, loaded = prepare_config(stored.config, host=host, base_dir=stored.base_dir)
    storage = Storage(run_dir, cipher=open_stored_run(stored, loaded, host))
    if not storage.exists("state/components.json"):
        raise PrivetError(f"{run_dir}: no state/components.json; the run did not finish preparing "
                          f"its data")
    state = storage.read_json("state/components.json")
    model = loaded.instantiate(host.catalog, "model")
    model.load_state_dict(state["model"]["state"])
    return model, build_with_weights(model, storage, seed=loaded.config.seed, weights=weights)


def build_with_weights(model: Any, storage: Storage, *, seed: int, weights: str = "best") -> Any:
    """A fresh module of ``model`` with the run's ``best`` (else last) or ``last`` weights,
    in eval mode: what export and inference use, built the same way right after training."""
    import torch

    from .checkpoint import CheckpointManager, read_weights

    torch.manual_seed(seed)
    module = model.build()
    if weights == "best" and storage.exists("best/model.safetensors"):
        path = storage.path("best/model.safetensors")
    else:
        latest = CheckpointManager(storage).latest()
        if latest is None:
            raise PrivetError(f"{storage.root}: no checkpoint to load; train the run first")
        path = latest / "model.safetensors"
    read_weights(Path(path), module, model, storage=storage.sub(Path(path).parent))
    module.eval()
    return module


def load_cleaners(run_dir: str | Path, host: Any | None = None) -> list[Any]:
    """The run's cleaners with their fitted state (for preprocessing at inference)."""
    from ..crypto import open_stored_run
    from ..pipeline import prepare_config
    from ..runs import load_run

    stored = load_run(run_dir)
    host, loaded = prepare_config(stored.config, host=host, base_dir=stored.base_dir)
    storage = Storage(stored.run_dir, cipher=open_stored_run(stored, loaded, host))
    state = storage.read_json("state/components.json")
    cleaners = []
    for i, item in enumerate(state["cleaners"]):
        cleaner = loaded.instantiate(host.catalog, f"data.cleaners.{i}")
        cleaner.load_state_dict(item["state"])
        cleaners.append(cleaner)
    return cleaners
