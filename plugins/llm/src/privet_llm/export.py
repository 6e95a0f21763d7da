"""Exporters of ``llm.causal_lm`` runs: ``merged`` and ``adapter`` (``privet export --format``).

``merged`` writes ``RUN/export/merged/``: a Hugging Face folder (``config.json``,
``model.safetensors``, ``generation_config.json`` and the tokenizer with the chat template
the run trained with) holding the base weights with the LoRA/DoRA adapter merged in, which
plain ``transformers.AutoModelForCausalLM.from_pretrained`` loads without Privet. The
merge happens in the trained model's own full-precision weights and is undone afterwards
(no second copy of the model in memory). A run trained on 4-bit or 8-bit weights is
refused: merging into quantized weights rounds the adapter's update away, and merging into
a full-precision copy gives a model the adapter was never trained against.

``adapter`` writes ``RUN/export/adapter/``: the PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) and the tokenizer, small, for
``peft.PeftModel.from_pretrained(base, folder)``.

Both check themselves (``verifies_itself``): ``merged`` is loaded back with transformers
and its logits on validation prompts are compared with the adapter model's (the max
difference goes into the export report); ``adapter`` re-reads the written tensors and
compares them with the trained ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from privet import ExportError, Exporter

#: Validation prompts compared, and the tokens kept of each.
PROMPTS = 8
PROMPT_TOKENS = 64
#: Allowed |merged - adapter| logit difference: ``atol + rtol * max |logit|`` by dtype.
TOLERANCE = {"float32": (1e-4, 1e-5), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 2e-2)}


def is_peft(module: Any) -> bool:
    """Whether ``module`` is a PEFT model (base weights plus an adapter)."""
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def base_of(module: Any) -> Any:
    """The ``transformers`` model under a PEFT wrapper (or ``module`` itself)."""
    return module.get_base_model() if is_peft(module) else module


def quantized(module: Any) -> str | None:
    """``4bit``/``8bit`` when the base weights are quantized (bitsandbytes), else ``None``."""
    base = base_of(module)
    if getattr(base, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(base, "is_loaded_in_8bit", False):
        return "8bit"
    config = getattr(getattr(base, "config", None), "quantization_config", None)
    if config is not None:
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        return "4bit" if get("load_in_4bit") else "8bit" if get("load_in_8bit") else "quantized"
    return None


def tokenizer_of(model: Any, module: Any) -> Any:
    """The tokenizer the run trained with: the model component's (export's own if loaded)."""
    from .generation import TOKENIZER_ATTR

    tokenizer = getattr(module, TOKENIZER_ATTR, None) or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ExportError(f"model {getattr(model, 'name', model)!r} holds no tokenizer; "
                          f"an LLM export needs the run's tokenizer")
    return tokenizer


def save_tokenizer(model: Any, tokenizer: Any, folder: Path) -> None:
    """The tokenizer, with the chat template the run rendered its training chats with."""
    template = getattr(getattr(model, "options", None), "chat_template", None)
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(str(folder))


def prompts_of(model: Any, records: list[Any], tokenizer: Any) -> list[list[int]]:
    """Token ids of up to ``PROMPTS`` validation examples (their first ``PROMPT_TOKENS``).

    Falls back to one rendered greeting when the run has no cached examples.
    """
    out: list[list[int]] = []
    for record in records:
        ids = record.get("input_ids") if isinstance(record, dict) else None
        if ids is None:
            try:
                item = model.encode(record)
            except Exception:  # a record the model drops is simply not a prompt
                continue
            ids = item.get("input_ids") if isinstance(item, dict) else None
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids or [])]
        ids = [i for i in ids if i >= 0][:PROMPT_TOKENS]
        if len(ids) >= 2:
            out.append(ids)
        if len(out) >= PROMPTS:
            break
    if not out:
        from .generation import encode_prompt

        out.append(encode_prompt(tokenizer, "hello", raw=not getattr(tokenizer, "chat_template", None)))
    return out


def logits_on(module: Any, prompts: list[list[int]]) -> list[Any]:
    """Float32 logits of ``module`` for each prompt (one at a time: no padding involved)."""
    import torch

    device = next(module.parameters()).device
    module.eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            logits = module(input_ids=torch.tensor([ids], device=device)).logits
            out.append(logits.float().cpu())
    return out


def compare(before: list[Any], after: list[Any], dtype: str) -> dict[str, Any]:
    """Max |difference| between two lists of logits, and whether it is within tolerance."""
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    scale = max(float(a.abs().max()) for a in before)
    atol, rtol = TOLERANCE.get(dtype, TOLERANCE["float32"])
    tolerance = atol + rtol * scale
    return {"max_abs_diff": diff, "max_abs_logit": scale, "tolerance": tolerance,
            "ok": diff <= tolerance, "prompts": len(before),
            "tokens": sum(int(a.shape[1]) for a in before)}


def _dtype_name(module: Any) -> str:
    return str(next(module.parameters()).dtype).replace("torch.", "")


def merged_state(module: Any) -> dict[str, Any]:
    """The base model's state dict with plain keys, taken while the adapter is merged in.

    Drops the adapter's own tensors (``lora_*``) and the copies PEFT keeps of
    ``modules_to_save`` (``original_module``); ``...base_layer.weight`` becomes ``...weight``.
    """
    adapter = getattr(module, "active_adapter", "default")
    out = {}
    for key, tensor in base_of(module).state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue
        if "modules_to_save" in parts:
            i = parts.index("modules_to_save")
            if parts[i + 1] != adapter:
                continue
            parts = parts[:i] + parts[i + 2:]
        out[".".join(p for p in parts if p != "base_layer")] = tensor
    return out


def load_merged(folder: Path) -> Any:
    """A merged export as plain transformers loads it (safetensors only, no code from the folder)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .checkpoint import load_tokenizer

    hf_logging.disable_progress_bar()  # a bar per load would bury privet's own output
    module = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                  use_safetensors=True, trust_remote_code=False,
                                                  dtype="auto")
    from .generation import TOKENIZER_ATTR

    setattr(module, TOKENIZER_ATTR, load_tokenizer(folder))
    return module.eval()


def _runner(module: Any) -> Any:
    """``{"input_ids": array} -> [logits]``: how ``privet predict`` runs an artifact."""
    import numpy as np
    import torch

    def run(feed: dict[str, Any]) -> list[Any]:
        ids = torch.as_tensor(np.asarray(feed["input_ids"]), dtype=torch.long)
        with torch.no_grad():
            return [module(input_ids=ids).logits.float().numpy()]

    return run


class MergedExporter(Exporter):
    """The adapter merged into the full-precision base: a Hugging Face model folder that
    plain ``transformers`` loads (``RUN/export/merged``), checked against the adapter model."""

    verifies_itself: ClassVar[bool] = True
    artifact_is_code: ClassVar[bool] = False  # safetensors and JSON, loaded without remote code

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str], *, model: Any = None,
               records: list[Any] | None = None) -> Path:
        from .model import unwrap

        module = unwrap(module)
        bits = quantized(module)
        if bits:
            raise ExportError(
                f"refusing to merge: this run trained its adapter on {bits} base weights; merging "
                f"into quantized weights rounds the adapter's update away, and a full-precision "
                f"copy is not the model the adapter was trained against. Export the adapter "
                f"(--format adapter) and apply it to the {bits} base, or train without quantize")
        folder = Path(out_dir) / "merged"
        tokenizer = tokenizer_of(model, module)
        prompts = prompts_of(model, list(records or []), tokenizer)
        before = logits_on(module, prompts)
        self._save(module, folder)
        save_tokenizer(model, tokenizer, folder)
        dtype = _dtype_name(module)
        check = compare(before, logits_on(load_merged(folder), prompts), dtype)
        check["compared"] = ("logits of the merged folder loaded by transformers vs the trained "
                             "adapter model, on validation prompts")
        self.verification = {"validation": check}
        self.details = {"precision": dtype, "merged_adapter": is_peft(module)}
        self.notes = [f"max |logit difference| merged vs adapter model: {check['max_abs_diff']:.3g} "
                      f"on {check['prompts']} validation prompts ({check['tokens']} tokens)"]
        return folder

    @staticmethod
    def _save(module: Any, folder: Path) -> None:
        """Write the merged weights; the adapter is merged in place and taken out again."""
        base = base_of(module)
        use_cache = getattr(base.config, "use_cache", True)
        base.config.use_cache = True  # training turns the KV cache off; generation wants it
        try:
            if not is_peft(module):  # full fine-tuning: the weights are the model
                module.save_pretrained(str(folder), safe_serialization=True)
                return
            module.merge_adapter()
            try:
                base.save_pretrained(str(folder), state_dict=merged_state(module),
                                     safe_serialization=True)
            finally:
                module.unmerge_adapter()
        finally:
            base.config.use_cache = use_cache

    def load(self, path: Any) -> Any:
        return _runner(load_merged(Path(path)))

    def load_module(self, path: Any) -> Any:
        return load_merged(Path(path))


class AdapterExporter(Exporter):
    """The trained LoRA/DoRA adapter as a PEFT folder (``RUN/export/adapter``), with the
    tokenizer; apply it with ``peft.PeftModel.from_pretrained(base, folder)``."""

    verifies_itself: ClassVar[bool] = True
    artifact_is_code: ClassVar[bool] = False

    def export(self, module: Any, example_inputs: tuple[Any, ...], out_dir: Any,
               input_names: list[str], output_names: list[str], *, model: Any = None,
               records: list[Any] | None = None) -> Path:
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file

        from .model import unwrap

        module = unwrap(module)
        if not is_peft(module):
            raise ExportError("this run trained all weights (adapter: none), so there is no "
                              "adapter to export; use --format merged")
        folder = Path(out_dir) / "adapter"
        module.save_pretrained(str(folder), safe_serialization=True)
        save_tokenizer(model, tokenizer_of(model, module), folder)
        trained = get_peft_model_state_dict(module)
        written = load_file(str(folder / "adapter_model.safetensors"))
        missing = sorted(set(trained) ^ set(written))
        diff = max((float((trained[k].float().cpu() - written[k].float()).abs().max())
                    for k in trained if k in written), default=0.0)
        self.verification = {"validation": {
            "max_abs_diff": diff, "ok": diff == 0.0 and not missing, "tensors": len(written),
            "compared": "adapter tensors written vs trained",
            **({"error": f"tensors differ between the trained and written adapter: {missing[:3]}"}
               if missing else {})}}
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        self.details = {"precision": _dtype_name(module), "peft_type": config.get("peft_type"),
                        "r": config.get("r"), "base_model": config.get("base_model_name_or_path")}
        self.notes = []
        return folder

    def load(self, path: Any) -> Any:
        raise ExportError(f"{path}: an adapter needs its base model to run; predict or generate "
                          f"with the merged export ('privet export RUN --format merged')")

    def load_module(self, path: Any) -> Any:
        return self.load(path)
