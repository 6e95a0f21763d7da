"""privet-text benchmarks: preparation throughput and text.gpt training throughput on CPU.

    python benchmarks/bench_text_prep.py [--records 20000] [--repeats 5] [--steps 20] [--threads N]
                                         [--only cleaners]

1. Preparation, records/s: Privet's path (cleaners ``text.normalize`` ->
   ``text.redact_pii`` -> ``text.length_filter``, then ``text.gpt``'s ``examples()``,
   which tokenizes in batches of 256 and packs blocks) against calling the same trained
   ``tokenizers`` tokenizer directly (``encode_batch`` in batches of 256) on the same raw
   records. Runs are interleaved and the median of ``--repeats`` is reported. Target:
   Privet >= 0.8x the direct call.
2. Cleaners, µs per record: each of the text starter's per-record cleaners
   (``text.strip_html``, ``text.normalize``, ``text.redact_pii``, ``text.length_filter``;
   ``text.dedupe`` has its own benchmark, bench_dedupe.py) and the four in a row, called
   record by record (``clean``) and over batches of 512 (``clean_batch``, as the engine
   does), on the same records (a tenth hold HTML, another tenth PII); median of
   ``--repeats``, CPU time of this process. Both paths must keep the same records.
3. Training, tokens/s: ``text.gpt`` (4 layers, hidden 256, 4 heads, context 256,
   vocabulary 8000, batch 8, fp32, AdamW) through the component's ``step`` on the CPU;
   median over ``--steps`` steps after 3 warm-up steps.

Prints a markdown table (paste it into docs/benchmarks-text.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from datetime import date

from _common import machine

WORDS = ("the quick delivery was great but the box arrived damaged and support answered "
         "within two days with a refund offer which I accepted happily overall good value "
         "kettle headphones backpack lamp keyboard blender jacket").split()
EXTRAS = [" Contact me at anna.k@example.com.", " Call +44 20 7946 0958.", " Card 4111 1111 1111 1111.",
          "", "", "", "", ""]


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + rng.choice(EXTRAS)}
            for _ in range(n)]


def build(records: list[dict]):
    from privet.testing import make_test_host
    from privet_text import plugin

    host = make_test_host()
    host.register_plugin(plugin, "text")
    cleaners = [host.make("cleaner", "text.normalize"), host.make("cleaner", "text.redact_pii"),
                host.make("cleaner", "text.length_filter", {"min_chars": 10, "max_chars": 20000})]
    model = host.make("model", "text.gpt", {"layers": 4, "hidden": 256, "heads": 4, "context_length": 256,
                                            "tokenizer": {"vocab_size": 8000}})
    model.fit(records)
    return cleaners, model


def privet_prep(records: list[dict], cleaners, model) -> int:
    from privet import DropRecord

    def cleaned():  # as the engine cleans: cleaner by cleaner over batches of 512
        for i in range(0, len(records), 512):
            batch = [dict(r) for r in records[i:i + 512]]
            for cleaner in cleaners:
                batch = [r for r in cleaner.clean_batch(batch) if r is not None and not isinstance(r, DropRecord)]
            yield from batch

    return sum(len(b["ids"]) for b in model.examples(cleaned(), "train"))


def direct_tokenizers(records: list[dict], tokenizer) -> int:
    texts = [r["text"] for r in records]
    total = 0
    for i in range(0, len(texts), 256):
        total += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i:i + 256], add_special_tokens=False))
    return total


def bench_prep(records: list[dict], repeats: int) -> dict[str, float]:
    cleaners, model = build(records)
    hf = model.tokenizer.hf
    privet_times, direct_times = [], []
    for _ in range(repeats):  # interleaved, so background load hits both alike
        t = time.perf_counter()
        privet_prep(records, cleaners, model)
        privet_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        direct_tokenizers(records, hf)
        direct_times.append(time.perf_counter() - t)
    n = len(records)
    p, d = n / statistics.median(privet_times), n / statistics.median(direct_times)
    return {"privet": p, "direct": d, "ratio": p / d}


STARTER_CLEANERS = [("text.strip_html", {}), ("text.normalize", {}), ("text.redact_pii", {}),
                    ("text.length_filter", {"min_chars": 5, "max_chars": 20000})]
HTML = ["<p>{}</p>", "<div><b>{}</b> &amp; more</div>", "{}"]


def make_cleaner_records(n: int, seed: int = 2) -> list[dict]:
    """As the issue's corpus: PII in 10% of the records; HTML in another 10%."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
        roll = rng.random()
        if roll < 0.1:
            text += rng.choice(EXTRAS[:3])
        elif roll < 0.2:
            text = rng.choice(HTML[:2]).format(text)
        records.append({"text": text})
    return records


def run_cleaners(records: list[dict], cleaners: list, batched: bool) -> tuple[float, int]:
    """CPU seconds and records kept, cleaning copies of ``records`` through ``cleaners``."""
    from privet import DropRecord

    start, kept = time.process_time(), 0
    for i in range(0, len(records), 512):
        batch = [dict(r) for r in records[i:i + 512]]
        for cleaner in cleaners:
            if batched:
                out = cleaner.clean_batch(batch)
            else:
                out = []
                for record in batch:
                    try:
                        out.append(cleaner.clean(record))
                    except DropRecord as drop:
                        out.append(drop)
            batch = [r for r in out if r is not None and not isinstance(r, DropRecord)]
        kept += len(batch)
    return time.process_time() - start, kept


def bench_cleaners(n: int, repeats: int) -> list[tuple[str, float, float]]:
    """(name, µs per record with clean, with clean_batch) per cleaner and for all four."""
    from privet.testing import make_test_host
    from privet_text import plugin

    host = make_test_host()
    host.register_plugin(plugin, "text")
    records = make_cleaner_records(n)
    rows = []
    for name, chain in [(c[0], [c]) for c in STARTER_CLEANERS] + [("all four in a row", STARTER_CLEANERS)]:
        times: dict[bool, list[float]] = {False: [], True: []}
        kept: dict[bool, int] = {}
        for _ in range(repeats):  # interleaved, so background load hits both alike
            for batched in (False, True):
                cleaners = [host.make("cleaner", c, o) for c, o in chain]
                seconds, kept[batched] = run_cleaners(records, cleaners, batched)
                times[batched].append(seconds / n * 1e6)
        assert kept[False] == kept[True], (name, kept)
        rows.append((name, statistics.median(times[False]), statistics.median(times[True])))
    return rows


def bench_train(steps: int) -> dict[str, float]:
    import torch

    from privet.testing import make_test_host
    from privet_text import plugin

    host = make_test_host()
    host.register_plugin(plugin, "text")
    model = host.make("model", "text.gpt", {"layers": 4, "hidden": 256, "heads": 4, "context_length": 256,
                                            "tokenizer": {"vocab_size": 8000, "min_frequency": 1}})
    model.fit(make_records(3000, seed=1))
    torch.manual_seed(0)
    module = model.build().train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-4)
    vocab = model.tokenizer.vocab_size
    batch_size, ctx = 8, 256
    times = []
    for i in range(steps + 3):
        batch = torch.randint(4, vocab, (batch_size, ctx + 1))
        t = time.perf_counter()
        out = model.step(module, batch)
        (out.loss_sum / out.count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in module.parameters())
    return {"tokens_per_s": batch_size * ctx / statistics.median(times), "params": params,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0: torch's default)")
    parser.add_argument("--only", choices=["cleaners"], help="run the cleaner benchmark only")
    args = parser.parse_args()
    if args.only in (None, "cleaners"):
        print(f"Machine: {machine(load=True)}; {date.today()}; {args.records} records, "
              f"CPU time, median of {args.repeats}\n")
        print("| cleaner | µs per record, clean | µs per record, clean_batch (512) | speed-up |")
        print("| --- | ---: | ---: | ---: |")
        for name, one, many in bench_cleaners(args.records, args.repeats):
            print(f"| {name} | {one:.1f} | {many:.1f} | {one / many:.1f}x |")
        print()
        if args.only:
            return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    records = make_records(args.records)
    prep = bench_prep(records, args.repeats)
    train = bench_train(args.steps)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"privet-text benchmarks, {date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average at end {load:.1f}\n")
    print("| measure | Privet | baseline | ratio | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| preparation, records/s ({args.records} records, normalize + redact_pii + length_filter + "
          f"BPE 8k + packing) | {prep['privet']:,.0f} | {prep['direct']:,.0f} (tokenizers encode_batch) | "
          f"{prep['ratio']:.2f}x | >= 0.8x |")
    print(f"| text.gpt training, tokens/s (4 layers, hidden 256, 4 heads, context 256, "
          f"{train['params'] / 1e6:.1f} M parameters, batch 8, fp32, {train['threads']} threads) | "
          f"{train['tokens_per_s']:,.0f} | - | - | stated |")


if __name__ == "__main__":
    main()
