"""privet-llm benchmark: LoRA fine-tuning tokens/s and peak memory against Hugging Face
``Trainer`` + ``peft`` on the same model, data, LoRA config, sequence length and batch.

    python benchmarks/bench_llm.py [--chats 600] [--repeats 3] [--batch 8] [--max-length 512]
                                   [--hidden 256] [--layers 4] [--vocab 2000] [--quantize 4bit]
                                   [--write-docs]

A Qwen2 checkpoint (random weights; hidden 256, 4 layers, a 2k-token byte-level BPE
tokenizer trained here with an R1-Distill chat template) and synthetic chats of very
different lengths (prompts of 10-150 words, answers of 5-80: padding waste is what real
chat data has) are written to a temp folder. Each measurement is a fresh process (so peak
memory is that run's alone), and the runs alternate between the contenders:

* ``hf``: ``transformers.Trainer`` with ``peft`` LoRA, one epoch, the chats tokenised with
  the same ids and labels Privet trains on, padded per batch (``DataCollatorForSeq2Seq``),
  no evaluation, no checkpoints;
* ``privet``: ``privet run`` (engine in-process) with ``llm.causal_lm``, the same LoRA
  options, ``packing: true``; ``privet-nopack``: the same with ``packing: false``;
  ``privet-small``: packing with ``--packed-batch`` rows per batch, about the tokens of one
  padded reference batch (the same-memory comparison: a packed row is ``max_length`` long).

Tokens/s counts real (non-padding) tokens of the training split over the training loop's
time (``train_runtime`` of the Trainer, ``timings.train_s`` of Privet's report). Peak
memory: the process's peak RSS on a CPU, ``torch.cuda.max_memory_allocated`` on CUDA
(bf16 there, and ``--quantize 4bit`` loads the base in 4 bits on both sides).
Target: Privet with packing >= 1.3x HF's tokens/s, and no more memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-llm.md"
BEGIN, END = "<!-- bench_llm results begin -->", "<!-- bench_llm results end -->"
WORDS = ("the a customer asked about invoice payment refund delivery order account password reset "
         "device network printer office badge access portal manager report weekly monthly budget "
         "project deadline meeting schedule team server backup database query error warning "
         "ticket priority urgent please thanks could would should update install configure").split()


def corpus() -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(2000)]


def chats(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 150)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 80)))
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": answer}]})
    return rows


def setup(folder: Path, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "plugins" / "llm" / "tests"))
    import checkpoints  # the tests' checkpoint builder

    checkpoints.make_qwen2(folder / "model", hidden_size=args.hidden, num_hidden_layers=args.layers,
                           intermediate_size=args.hidden * 11 // 4, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=args.max_length,
                           tokenizer_vocab=args.vocab, corpus=corpus())
    lines = [json.dumps(c) for c in chats(args.chats)]
    (folder / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def lora(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def privet_worker(folder: Path, args: argparse.Namespace, packing: bool, batch: int) -> dict[str, Any]:
    import torch
    from privet.testing import make_test_host
    from privet.train.engine import run_from_config

    cuda = torch.cuda.is_available()
    options = {"path": str(folder / "model"), "adapter": lora(args), "max_length": args.max_length,
               "packing": packing, "dtype": "bfloat16" if cuda else "float32", "quantize": args.quantize}
    config = {"name": f"bench-{packing}-{os.getpid()}", "seed": 0, "runs_dir": str(folder / "runs"),
              "data": {"source": {"name": "llm.chat", "options": {"paths": [str(folder / "chats.jsonl")]}},
                       "split": {"method": "ordered", "val": 0.02}},
              "model": {"name": "llm.causal_lm", "options": options},
              "train": {"epochs": 1, "batch_size": batch, "progress": "none",
                        "precision": "bf16" if cuda else "fp32", "log_every_n_steps": 50,
                        "optimizer": {"name": "adamw", "lr": 2e-4},
                        "checkpoint": {"every_n_steps": 10**6, "keep_last": 1}}}
    host = make_test_host()
    host.load_installed("llm")
    _run_dir, report = run_from_config(config, host=host, base_dir=folder, overrides=[])
    tokens = report["model"]["examples"]["train"]["tokens"]
    return {"tokens": tokens, "seconds": report["timings"]["train_s"], "peak_mib": peak_memory_mib()}


def hf_worker(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, DataCollatorForSeq2Seq,
                              Trainer, TrainingArguments)

    sys.path.insert(0, str(ROOT / "plugins" / "llm" / "src"))
    from privet_llm.chat import ChatEncoder
    from privet_llm.checkpoint import load_tokenizer

    cuda = torch.cuda.is_available()
    tokenizer = load_tokenizer(folder / "model")
    encoder = ChatEncoder(tokenizer)
    rows = [json.loads(line) for line in (folder / "chats.jsonl").read_text().splitlines()]
    rows = rows[:len(rows) - max(1, round(len(rows) * 0.02))]  # Privet's ordered training split
    data = []
    for row in rows:
        ids, learned = encoder.chat(row["messages"])
        ids, learned = ids[:args.max_length], learned[:args.max_length]
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [t if keep else -100 for t, keep in zip(ids, learned)]})
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16) if args.quantize == "4bit" else None
    model = AutoModelForCausalLM.from_pretrained(str(folder / "model"), quantization_config=quant,
                                                 dtype=torch.bfloat16 if cuda else torch.float32)
    a = lora(args)
    model = get_peft_model(model, LoraConfig(r=a["r"], lora_alpha=a["alpha"], lora_dropout=0.0,
                                             target_modules=a["target_modules"], task_type="CAUSAL_LM"))
    targs = TrainingArguments(output_dir=str(folder / "hf"), per_device_train_batch_size=args.batch,
                              num_train_epochs=1, learning_rate=2e-4, save_strategy="no",
                              eval_strategy="no", logging_steps=50, report_to=[], bf16=cuda,
                              use_cpu=not cuda, dataloader_num_workers=0, seed=0,
                              disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=data,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    metrics = trainer.train().metrics
    return {"tokens": sum(len(d["input_ids"]) for d in data), "seconds": metrics["train_runtime"],
            "peak_mib": peak_memory_mib()}


def run_one(kind: str, folder: Path, argv: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", str(folder), *argv],
                         capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    import torch
    import transformers

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    def tps(kind: str) -> float:
        return statistics.median(r["tokens"] / r["seconds"] for r in results[kind])

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    from _common import machine

    lines = [f"{date.today()}, {device}, {machine(load=True)}, Python {sys.version.split()[0]}, "
             f"torch {torch.__version__}, transformers {transformers.__version__}. Qwen2 hidden "
             f"{args.hidden}, {args.layers} layers, vocabulary {args.vocab}; {args.chats} chats, "
             f"max_length {args.max_length}, batch {args.batch}, LoRA r 16 on all 7 projections, "
             f"quantize {args.quantize}; median of {args.repeats} interleaved runs.", "",
             "| contender | tokens/s | vs HF | peak memory, MiB |", "| --- | ---: | ---: | ---: |"]
    base = tps("hf")
    names = {"hf": f"HF Trainer + peft, batch {args.batch} (padding per batch)",
             "privet": f"Privet, packing: true, batch {args.batch}",
             "privet-nopack": f"Privet, packing: false, batch {args.batch}",
             "privet-small": f"Privet, packing: true, batch {args.packed_batch} (~ the tokens of "
                             f"a padded batch)"}
    for kind in names:
        lines.append(f"| {names[kind]} | {tps(kind):,.0f} | {tps(kind) / base:.2f}x | "
                     f"{median(kind, 'peak_mib'):,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--quantize", choices=["none", "4bit"], default="none")
    parser.add_argument("--packed-batch", type=int, default=3,
                        help="rows per batch of the 4th contender (packing, about the tokens "
                             "of one padded reference batch)")
    parser.add_argument("--write-docs", action="store_true", help=f"put the table into {DOC}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder = Path(args.folder)
        if args.worker == "hf":
            result = hf_worker(folder, args)
        else:
            batch = args.packed_batch if args.worker == "privet-small" else args.batch
            result = privet_worker(folder, args, packing=args.worker != "privet-nopack", batch=batch)
        print(json.dumps(result))
        return
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("chats", "batch", "max_length", "hidden", "layers", "vocab", "quantize",
                     "packed_batch")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        setup(folder, args)
        results: dict[str, list[dict[str, Any]]] = {"hf": [], "privet": [], "privet-nopack": [],
                                                     "privet-small": []}
        for _ in range(args.repeats):
            for kind in results:
                results[kind].append(run_one(kind, folder, argv))
                print(kind, results[kind][-1], file=sys.stderr)
    section = table(results, args)
    print(section)
    if args.write_docs:
        from _common import replace_results

        replace_results(DOC, section, BEGIN, END)


if __name__ == "__main__":
    main()
