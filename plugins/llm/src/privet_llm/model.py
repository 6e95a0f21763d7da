"""``llm.causal_lm``: fine-tune a local Hugging Face causal LM (LoRA, DoRA or full).

The engine does the training (precision, accumulation, clipping, schedulers, early
stopping, checkpoints, DDP and FSDP2); this component loads the checkpoint, turns records into
token ids (:mod:`privet_llm.examples`), wraps the model with peft, and computes the
summed next-token loss over the target tokens only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import attrs
from privet import (ConfigError, CheckpointError, Model, OptionValueError, Record, StepOutput,
                    existing_path, positive)

from .checkpoint import folder_problem, load_config, load_model, load_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch

ALL_LINEAR = "all-linear"
_DTYPES = ("float32", "bfloat16", "float16", "auto")


def _unit_interval(_instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise OptionValueError(f"{attribute.name} must be in [0, 1), got {value}", attribute.name)


@attrs.define(frozen=True)
class AdapterOptions:
    """peft's ``LoraConfig`` options under the names it uses (r, alpha, dropout, targets)."""

    kind: str = attrs.field(default="lora", validator=attrs.validators.in_(["lora", "dora", "none"]))
    r: int = attrs.field(default=16, validator=positive)
    alpha: float = attrs.field(default=32.0, validator=positive)
    dropout: float = attrs.field(default=0.05, validator=_unit_interval)
    #: Module names (``q_proj``) or full dotted names; ``[all-linear]``: every linear
    #: layer but the output head.
    target_modules: list[str] = attrs.field(factory=lambda: [ALL_LINEAR])


@attrs.define(frozen=True)
class EvalOptions:
    """Questions answered after training (``privet_llm.evaluation``)."""

    file: Path = attrs.field(validator=existing_path)
    max_new_tokens: int = attrs.field(default=64, validator=positive)


@attrs.define(frozen=True)
class CausalLMOptions:
    path: Path = attrs.field(validator=existing_path)
    adapter: AdapterOptions = attrs.field(factory=AdapterOptions)
    quantize: str = attrs.field(default="none", validator=attrs.validators.in_(["none", "4bit", "8bit"]))
    max_length: int = attrs.field(default=1024, validator=attrs.validators.ge(2))
    #: A chat longer than ``max_length``: ``truncate`` (keep its start) or ``drop``.
    overflow: str = attrs.field(default="truncate", validator=attrs.validators.in_(["truncate", "drop"]))
    packing: bool = True
    loss_on: str = attrs.field(default="assistant", validator=attrs.validators.in_(["assistant", "all"]))
    gradient_checkpointing: bool = False
    #: A Jinja chat template replacing the checkpoint's own.
    chat_template: Optional[str] = None
    #: Dtype of the loaded weights; ``float32`` trains anywhere, ``bfloat16`` halves memory.
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(_DTYPES))
    attn_implementation: Optional[str] = None
    #: Load pickled ``.bin`` weights (with ``torch.load(weights_only=True)``).
    allow_pickle: bool = False
    #: ``{file: qa.jsonl}``: exact match of greedy answers after training, in report.json.
    eval: Optional[EvalOptions] = None

    def __attrs_post_init__(self) -> None:
        problem = folder_problem(Path(self.path), self.allow_pickle)
        if problem:
            raise OptionValueError(problem, "path")
        if self.quantize != "none":
            _check_quantize(self)


def _check_quantize(options: CausalLMOptions) -> None:
    """4/8-bit needs bitsandbytes on CUDA, and an adapter (quantized weights do not train)."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise OptionValueError(f"quantize: {options.quantize} needs a CUDA GPU (bitsandbytes); "
                               f"none is available here, use quantize: none", "quantize")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise OptionValueError("quantize needs bitsandbytes: pip install 'privet-llm[cuda]'", "quantize")
    if options.adapter.kind == "none":
        raise OptionValueError("quantize needs adapter kind lora or dora: quantized weights "
                               "cannot be fine-tuned in full", "quantize")


def unwrap(module: Any) -> Any:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None) or (
            module.module if type(module).__name__ == "DistributedDataParallel" else None)
        if inner is None:
            return module
        module = inner


class CausalLM(Model):
    """A local Hugging Face causal LM fine-tuned on chats (``llm.chat``) or documents
    (``llm.text``), with a LoRA/DoRA adapter (``adapter.kind``) or in full (``none``).

    Chats are rendered with the checkpoint's chat template exactly as inference renders
    prompts; only assistant tokens and each answer's EOS carry loss (``loss_on:
    assistant``). With ``packing`` several sequences share a row without attending to
    each other. Checkpoints of adapter runs hold the adapter tensors only.
    """

    task = "lm"
    Options = CausalLMOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._tokenizer: Any = None
        self.special: dict[str, int] = {}
        self.counts: dict[str, dict[str, int]] = {}

    # -- tokenizer and data -----------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer, checked against the model's vocabulary (loaded once)."""
        if self._tokenizer is None:
            folder = Path(self.options.path)
            self._tokenizer = load_tokenizer(folder, getattr(load_config(folder), "vocab_size", None))
        return self._tokenizer

    def encoder(self) -> Any:
        from .chat import ChatEncoder

        return ChatEncoder(self.tokenizer, loss_on=self.options.loss_on,
                           chat_template=self.options.chat_template)

    def fit(self, records: Iterable[Record]) -> None:
        """Check the tokenizer, the adapter's target modules and the eval file before any
        data is encoded."""
        tok = self.tokenizer
        if self.options.adapter.kind != "none":
            check_targets(skeleton(Path(self.options.path)), self.options.adapter.target_modules)
        if self.options.eval is not None:  # a bad eval file stops the run now, not after training
            from .evaluation import questions

            questions(Path(self.options.eval.file))
        eos = int(tok.eos_token_id)
        self.special = {"eos_id": eos, "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else eos)}

    def examples(self, records: Iterable[Record], split: str) -> Iterator[Record]:
        """Tokenised (and packed) examples of one split; counts kept for the report."""
        from .examples import ExampleBuilder

        o = self.options
        builder = ExampleBuilder(self.encoder(), max_length=o.max_length, overflow=o.overflow,
                                 packing=o.packing)
        yield from builder.build(self._with_template(records))
        counts = dict(builder.counts)
        counts["history_turns_not_learned"] = builder.encoder.history_turns_not_learned
        self.counts[split] = counts

    def _with_template(self, records: Iterable[Record]) -> Iterator[Record]:
        """The records, refusing chats when neither the checkpoint nor the options give a
        chat template (one line, before any training)."""
        has_template = bool(self.options.chat_template or getattr(self.tokenizer, "chat_template", None))
        for record in records:
            if record.get("messages") and not has_template:
                raise ConfigError(f"{self.options.path}: the tokenizer has no chat template; set "
                                  f"model.options.chat_template", path="model.options.chat_template")
            yield record

    def state_dict(self) -> dict[str, Any]:
        return {"special": self.special, "counts": self.counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.special = dict(state.get("special", {}))
        self.counts = dict(state.get("counts", {}))

    def report(self) -> dict[str, Any]:
        """Per split: sequences, tokens, target tokens, truncated or dropped chats."""
        return {"examples": self.counts}

    def default_lr(self) -> float | None:
        """2e-4 for adapters (peft's and TRL's usual LoRA rate), 2e-5 for full fine-tuning."""
        return 2e-5 if self.options.adapter.kind == "none" else 2e-4

    # -- the module -------------------------------------------------------------------------------

    def build(self) -> torch.nn.Module:
        """The checkpoint, with gradient checkpointing and the adapter as the options say."""
        import torch

        o = self.options
        folder = Path(o.path)
        dtype = "auto" if o.dtype == "auto" else getattr(torch, o.dtype)
        model = load_model(folder, allow_pickle=o.allow_pickle, dtype=dtype,
                           attn_implementation=self._attention(),
                           quantization_config=self._quantization_config())
        if o.quantize != "none":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=o.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        elif o.gradient_checkpointing:
            enable_checkpointing(model)
        if o.adapter.kind == "none":
            return model
        return self._with_adapter(model)

    def _attention(self) -> str | None:
        """The option's attention, else per-sequence attention for packed rows."""
        if self.options.attn_implementation or not self.options.packing:
            return self.options.attn_implementation
        from .attention import register

        return register()

    def _quantization_config(self) -> Any:
        if self.options.quantize == "none":
            return None
        import torch
        from transformers import BitsAndBytesConfig

        if self.options.quantize == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)

    def _with_adapter(self, model: Any) -> Any:
        import warnings

        from peft import LoraConfig, get_peft_model

        a = self.options.adapter
        targets = a.target_modules
        check_targets(model, targets)
        config = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none",
                            task_type="CAUSAL_LM", use_dora=a.kind == "dora",
                            target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else list(targets))
        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)

    # -- batches and loss -------------------------------------------------------------------------

    def encode(self, record: Record) -> Any:
        import torch

        from .examples import position_ids

        ids, lens = record["input_ids"], list(record["seq_lens"])
        return {"input_ids": torch.as_tensor(ids, dtype=torch.long),
                "labels": torch.as_tensor(record["labels"], dtype=torch.long),
                "position_ids": torch.as_tensor(position_ids(lens, len(ids)), dtype=torch.long),
                "seq_lens": torch.as_tensor(lens, dtype=torch.long)}

    def collate(self, items: list[Any]) -> Any:
        """Right-padded rows; padding is a sequence of its own (positions from 0, no targets).

        ``cu_seq_lens`` marks where each sequence (and each row's padding) starts in the
        flattened batch, for attention that runs per sequence.
        """
        import torch

        from .attention import sequence_starts

        width = max(len(item["input_ids"]) for item in items)
        pad_id = self.special.get("pad_id", 0)
        batch = {"input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
                 "labels": torch.full((len(items), width), -100, dtype=torch.long),
                 "position_ids": torch.zeros((len(items), width), dtype=torch.long)}
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = item["input_ids"]
            batch["labels"][row, :n] = item["labels"]
            batch["position_ids"][row, :n] = item["position_ids"]
            batch["position_ids"][row, n:] = torch.arange(width - n)
        starts = sequence_starts([item["seq_lens"].tolist() for item in items], width)
        batch["cu_seq_lens"] = torch.tensor(starts, dtype=torch.int32)
        return batch

    def step(self, module: torch.nn.Module, batch: Any) -> StepOutput:
        """Summed cross-entropy over target tokens, and their count; ``per_example`` sums
        each row's tokens (a packed row holds several sequences: it is then the unit).

        Logits are computed only at positions where some row has a target
        (``logits_to_keep``): on chat data most positions are prompt, and the output head
        over a 150k-token vocabulary is the largest activation of the step.
        """
        import torch.nn.functional as F

        labels = batch["labels"]
        keep = (labels != -100).any(dim=0).nonzero().squeeze(1)
        spans = {}
        if self._attention() == "privet_packed" and "cu_seq_lens" in batch:
            spans = {"cu_seq_lens_q": batch["cu_seq_lens"], "cu_seq_lens_k": batch["cu_seq_lens"]}
        out = module(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     use_cache=False, logits_to_keep=keep, **spans)
        targets = labels[:, keep]
        logits = out.logits.float()
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                    ignore_index=-100, reduction="none")  # ignored tokens: 0
        per_example = per_token.view(targets.shape).sum(1)  # a row is one example
        return StepOutput(per_example.sum(), (targets != -100).sum(), per_example=per_example)

    def batch_size_of(self, batch: Any) -> int:
        return int(batch["input_ids"].shape[0])

    # -- checkpoints ------------------------------------------------------------------------------

    def trainable_state_dict(self, module: Any) -> dict[str, Any] | None:
        """The parameters that train: the adapter's for LoRA/DoRA (small checkpoints), every
        weight (shared ones once) for full fine-tuning."""
        return {name: p for name, p in unwrap(module).named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, module: Any, tensors: dict[str, Any]) -> None:
        inner = unwrap(module)
        trainable = {name for name, p in inner.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(tensors))
        unexpected = sorted(set(tensors) - set(inner.state_dict()))
        if missing or unexpected:
            raise CheckpointError(f"the checkpoint's tensors do not match this model's trainable "
                                  f"weights (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                                  f"use the pipeline file the run was trained with")
        inner.load_state_dict(tensors, strict=False)

    # -- generation (privet generate / privet chat; privet_llm.generation) ------------------------

    def generate(self, module: Any, prompt: str | list[dict[str, str]], *,
                 max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 raw: bool = False) -> Iterator[str]:
        """The reply to ``prompt`` (a text as one user turn, or a chat), streamed; the prompt
        is rendered by the same code that renders training chats. A module loaded from a
        merged export brings the export's tokenizer."""
        from .generation import TOKENIZER_ATTR, generate

        module = unwrap(module)
        tokenizer = getattr(module, TOKENIZER_ATTR, None) or self.tokenizer
        return generate(module, tokenizer, prompt, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, raw=raw,
                        chat_template=self.options.chat_template)


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing (works with frozen inputs, as under LoRA),
    through transformers 5's ``activation_checkpointing_enable`` or the older name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def skeleton(folder: Path) -> Any:
    """The checkpoint's architecture on the meta device: module names, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(load_config(folder), trust_remote_code=False)


def linear_names(model: Any) -> list[str]:
    """Last name components of the model's linear layers (what ``target_modules`` names)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name})


def check_targets(model: Any, targets: list[str]) -> None:
    """Refuse ``target_modules`` entries that match no module, listing the model's layers."""
    if targets == [ALL_LINEAR]:
        return
    names = [name for name, _m in model.named_modules() if name]
    known = set(names) | {n.rsplit(".", 1)[-1] for n in names}
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise ConfigError(f"no module named {', '.join(map(repr, unknown)) or '(none given)'} in "
                          f"{type(model).__name__}; its linear layers are: "
                          f"{', '.join(linear_names(model))} (or use all-linear)",
                          path="model.options.adapter.target_modules")
