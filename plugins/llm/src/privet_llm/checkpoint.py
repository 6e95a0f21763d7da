"""Local Hugging Face checkpoints: what a folder must hold, and loading it safely.

A model is a folder the user names: ``config.json``, weights and tokenizer files. Nothing
is downloaded (``local_files_only``) and no code from the folder runs
(``trust_remote_code=False``: the architecture must be one transformers knows). Weights
are read from safetensors; pickled ``.bin`` files are refused unless the pipeline says
``allow_pickle: true``, and are then read with ``torch.load(weights_only=True)``, which
unpickles tensors and plain data only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from privet import ConfigError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(safetensors files, pickled .bin files)`` in ``folder``, sorted."""
    return sorted(folder.glob("*.safetensors")), sorted(folder.glob("*.bin"))


def folder_problem(folder: Path, allow_pickle: bool) -> str | None:
    """Why ``folder`` is not a usable checkpoint (a one-line reason), or ``None``."""
    if not folder.is_dir():
        return f"{folder} is not a folder; name a local Hugging Face model folder"
    if not (folder / "config.json").is_file():
        return (f"{folder} has no config.json; name the folder that holds config.json, "
                f"*.safetensors and the tokenizer files (as save_pretrained writes it)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{folder / 'config.json'} is not valid JSON ({err})"
    if not isinstance(config, dict) or "model_type" not in config:
        return f"{folder / 'config.json'} has no model_type"
    safe, pickled = weight_files(folder)
    if not safe and not pickled:
        return f"{folder} holds no weights (*.safetensors)"
    if not safe and not allow_pickle:
        return (f"{folder} holds only pickled weights ({pickled[0].name}); pickles can run code. "
                f"Convert them to safetensors, or set allow_pickle: true to load them with "
                f"torch.load(weights_only=True)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return f"{folder} has no tokenizer files (tokenizer.json or tokenizer.model)"
    return None


def load_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as err:
        raise ConfigError(f"{folder}: transformers cannot read this config without running code "
                          f"from the folder ({str(err).splitlines()[0]})", path="model.options.path") from err


def load_tokenizer(folder: Path, vocab_size: int | None = None) -> Any:
    """The checkpoint's tokenizer; refused when it has more tokens than the embedding rows."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as err:
        raise ConfigError(f"{folder}: cannot load the tokenizer ({str(err).splitlines()[0]})",
                          path="model.options.path") from err
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ConfigError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's "
                          f"vocab_size is {vocab_size}; the tokenizer files belong to another "
                          f"model", path="model.options.path")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{folder}: the tokenizer defines no eos_token; generation could never "
                          f"stop", path="model.options.path")
    return tokenizer


def load_model(folder: Path, *, allow_pickle: bool, dtype: Any, attn_implementation: str | None,
               quantization_config: Any = None) -> Any:
    """The causal LM from ``folder`` (safetensors; pickles only with ``weights_only``)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # Privet has its own progress; keep stderr to its lines
    common: dict[str, Any] = dict(dtype=dtype, trust_remote_code=False)
    if attn_implementation:
        common["attn_implementation"] = attn_implementation
    if quantization_config is not None:  # bitsandbytes weights live on this process' GPU
        common["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    safe, pickled = weight_files(folder)
    if safe:
        return AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True,
            quantization_config=quantization_config, **common)
    if not allow_pickle:  # folder_problem refused it at validation; kept as a last guard
        raise ConfigError(f"{folder}: pickled weights need allow_pickle: true", path="model.options.allow_pickle")
    return _from_pickles(folder, pickled, common)


def _from_pickles(folder: Path, files: list[Path], common: dict[str, Any]) -> Any:
    import pickle

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(load_config(folder), **common)
    state: dict[str, Any] = {}
    for path in files:
        try:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as err:
            raise ConfigError(f"{path}: refused: it pickles objects other than tensors "
                              f"({str(err).splitlines()[0]})", path="model.options.path") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise ConfigError(f"{folder}: the .bin weights do not match config.json (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]})", path="model.options.path")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _tied_keys(model: Any) -> set[str]:
    """Parameters that share storage with another (the output head tied to the embedding)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied
