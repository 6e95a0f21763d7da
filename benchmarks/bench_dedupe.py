"""text.dedupe near-duplicate mode (``method: minhash``): microseconds per record.

    python benchmarks/bench_dedupe.py [--records 20000] [--repeats 5]

Compares, on the same generated short records (about 120 characters, 5% exact and 5%
near duplicates planted), the original implementation (one record per call: a
``num_perm x shingles`` matrix of permuted hashes per text, a Python loop over band
byte-strings), kept below as ``Legacy``, with today's ``Dedupe.clean_batch`` in batches
of 512 (canonical form, one-permutation MinHash, band keys and look-ups in a numpy hash
table, all over the whole batch). Both start from an empty seen-set each repeat; runs are
interleaved and the median of ``--repeats`` is reported, as wall time and as CPU time of
this process (steadier on a shared machine), with the machine line. Target: >= 10x.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from datetime import date

import numpy as np
from _common import machine
from privet import DropRecord
from privet_text.dedupe import Dedupe, canonical, lsh_params

WORDS = ("the quick delivery was great but the box arrived damaged and support answered "
         "within two days with a refund offer which I accepted happily overall good value "
         "kettle headphones backpack lamp keyboard blender jacket").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if out and roll < 0.05:
            out.append(rng.choice(out))  # exact duplicate
        elif out and roll < 0.10:
            words = rng.choice(out).split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)  # near duplicate
            out.append(" ".join(words))
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))))
    return out


class Legacy:
    """The per-record implementation this benchmark compares against."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1, threshold: float = 0.8):
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1))[:, None]
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)[:, None]
        self.n, self.threshold = shingle, threshold
        self.powers = np.array([pow(1_000_003, shingle - 1 - k, 2**64) for k in range(shingle)], dtype=np.uint64)
        self.bands, self.rows = lsh_params(num_perm, threshold)
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.sigs: list[np.ndarray] = []
        self.exact: set[bytes] = set()

    def signature(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(cps) < self.n:
            cps = np.concatenate([cps, np.zeros(self.n - len(cps), dtype=np.uint64)])
        windows = np.lib.stride_tricks.sliding_window_view(cps, self.n)
        with np.errstate(over="ignore"):
            hashes = np.unique((windows * self.powers).sum(axis=1, dtype=np.uint64))
            permuted = (self.a * hashes[None, :] + self.b) >> np.uint64(32)
        return (permuted & np.uint64(0xFFFFFFFF)).min(axis=1).astype(np.uint32)

    def clean(self, text: str) -> bool:
        text = canonical(text, punctuation=False)
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if digest in self.exact:
            return False
        sig = self.signature(text)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        seen: set[int] = set()
        for band, key in enumerate(keys):
            for idx in self.buckets[band].get(key, ()):
                if idx not in seen:
                    seen.add(idx)
                    if float(np.mean(self.sigs[idx] == sig)) >= self.threshold:
                        return False
        self.sigs.append(sig)
        for band, key in enumerate(keys):
            self.buckets[band].setdefault(key, []).append(len(self.sigs) - 1)
        self.exact.add(digest)
        return True


def run_legacy(texts: list[str]) -> tuple[float, float, int]:
    legacy = Legacy()
    wall, cpu = time.perf_counter(), time.process_time()
    kept = sum(legacy.clean(t) for t in texts)
    return time.perf_counter() - wall, time.process_time() - cpu, kept


def run_batched(texts: list[str]) -> tuple[float, float, int]:
    dedupe = Dedupe(Dedupe.Options(method="minhash"))
    wall, cpu = time.perf_counter(), time.process_time()
    kept = 0
    for i in range(0, len(texts), 512):
        out = dedupe.clean_batch([{"text": t} for t in texts[i:i + 512]])
        kept += sum(not isinstance(r, DropRecord) for r in out)
    return time.perf_counter() - wall, time.process_time() - cpu, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    texts = make_texts(args.records)
    wall: dict[str, list[float]] = {"legacy": [], "batched": []}
    cpu: dict[str, list[float]] = {"legacy": [], "batched": []}
    kept: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        for name, fn in (("legacy", run_legacy), ("batched", run_batched)):
            seconds, cpu_seconds, kept[name] = fn(texts)
            wall[name].append(seconds / len(texts) * 1e6)
            cpu[name].append(cpu_seconds / len(texts) * 1e6)
    old, new = statistics.median(wall["legacy"]), statistics.median(wall["batched"])
    old_cpu, new_cpu = statistics.median(cpu["legacy"]), statistics.median(cpu["batched"])
    print(f"Machine: {machine(load=True)}; {date.today()}; {args.records} records, "
          f"mean {sum(map(len, texts)) / len(texts):.0f} chars, median of {args.repeats}")
    print("| implementation | µs per record (wall) | µs per record (CPU) | kept |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| per record (original) | {old:.1f} | {old_cpu:.1f} | {kept['legacy']} |")
    print(f"| clean_batch, 512 (now) | {new:.1f} | {new_cpu:.1f} | {kept['batched']} |")
    print(f"\nspeed-up: {old / new:.1f}x wall, {old_cpu / new_cpu:.1f}x CPU")


if __name__ == "__main__":
    main()
