"""Preparation at corpus scale: records/s, MB/s and peak memory, 1 vs N worker processes.

    python benchmarks/bench_prep.py [--mb 1024] [--files 16] [--workers N] [--repeats 3]
                                    [--kinds text,timeseries] [--reuse] [--write-docs]

1. Text: a generated JSONL corpus of ``--mb`` MB in ``--files`` files, read in 8 MiB byte
   ranges (``chunk_mb: 8``), (lengths drawn from a
   log-normal, 20 to 2,000 words; 5% exact and 5% near duplicates; PII in 10% of records)
   through the text starter's cleaners (strip_html, normalize, redact_pii, dedupe minhash
   0.9, length_filter) and ``text.classifier``'s tokenizer (BPE 8000, trained on 20,000
   texts), which encodes every prepared text into the cache (``token_ids``, made in the
   workers). Floor: ``pyarrow.json.read_json`` of the files plus ``tokenizers``'
   ``encode_batch`` of every text, both on all cores.
2. Time series: a generated long-layout CSV of ``--mb`` MB (200 series, one row per hour,
   3 covariates with gaps and outliers), read as 8 MB byte-range shards, through the time
   series starter's cleaners (outliers, impute, calendar) and ``timeseries.lstm``'s windows
   (48 in, 12 out; ``--stride`` rows between window starts: at 1 every row starts a window
   of 2.3 KB, so the example cache is about 45x the CSV). Floor: ``pyarrow.csv.read_csv``.

Each Privet figure runs in a fresh process (its peak RSS is that process'; the workers'
own peak is reported beside it). The floor, 1 worker, 1 worker pinned to one core (its
affinity, so that pyarrow's and tokenizers' thread pools get one core too: the
single-process figure) and N workers run interleaved ``--repeats`` times and each figure
is the run of median time. Prints a markdown
table; ``--write-docs`` puts it into docs/benchmarks.md between the ``bench_prep`` markers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from _common import machine, replace_results

WORDS = ("the a of and to in is was for on that with as it at by from this be are have or an "
         "delivery order refund invoice customer account payment shipment contract policy claim "
         "support ticket product service quality price report meeting project deadline team "
         "manager review update request issue answer problem solution data system network").split()
PII = [" Contact me at anna.k{n}@example.com.", " Call +44 20 7946 {n:04d}.",
       " Card 4111 1111 1111 1111.", " IBAN GB82 WEST 1234 5698 7654 32."]
TOKENIZER = {"kind": "bpe", "vocab_size": 8000, "max_train_texts": 20000}


def _text(rng: random.Random, n: int) -> str:
    words = max(20, min(2000, int(rng.lognormvariate(4.4, 0.8))))
    text = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
    if rng.random() < 0.10:
        text += rng.choice(PII).format(n=n % 10000)
    return text


def make_text_corpus(folder: Path, mb: float, files: int, seed: int = 0) -> int:
    """JSONL files totalling ``mb`` MB; returns the record count."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_file = int(mb * 1e6 / files)
    recent: list[str] = []
    n = 0
    for f in range(files):
        with open(folder / f"part-{f:03d}.jsonl", "w", encoding="utf-8") as out:
            size = 0
            while size < per_file:
                roll = rng.random()
                if recent and roll < 0.05:
                    text = rng.choice(recent)  # exact duplicate
                elif recent and roll < 0.10:
                    words = rng.choice(recent).split()
                    words[rng.randrange(len(words))] = rng.choice(WORDS)  # near duplicate
                    text = " ".join(words)
                else:
                    text = _text(rng, n)
                recent = (recent + [text])[-1000:]
                line = json.dumps({"text": text, "label": rng.choice(["pos", "neg", "neutral"])}) + "\n"
                out.write(line)
                size += len(line)
                n += 1
    return n


def make_csv(path: Path, mb: float, series: int = 200, seed: int = 0) -> int:
    """A long-layout CSV (series, timestamp, value, 3 covariates) of about ``mb`` MB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("series,timestamp,value,temp,load,price\n")
        size, hour = 0, 0
        while size < mb * 1e6:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_600_000_000 + 3600 * hour))
            for s in range(series):
                temp = "" if rng.random() < 0.02 else f"{20 + 5 * math.sin(hour / 24) + rng.gauss(0, 1):.3f}"
                load = f"{rng.gauss(50, 10) * (8 if rng.random() < 0.005 else 1):.3f}"
                line = f"s{s},{stamp},{math.sin(hour / 12 + s) * 10 + rng.gauss(0, 1):.4f},{temp},{load},{rng.random():.4f}\n"
                out.write(line)
                size += len(line)
                n += 1
            hour += 1
    return n


# -- one measured run, in its own process ------------------------------------------------------

def _host():
    from privet.testing import make_test_host
    from privet_text import plugin as text_plugin
    from privet_timeseries import plugin as ts_plugin

    host = make_test_host()
    host.register_plugin(text_plugin, "text")
    host.register_plugin(ts_plugin, "timeseries")
    return host


def _prepare(kind: str, data: Path, cache: Path, workers: int) -> dict:
    from privet.config import ComponentSpec, DataConfig, SplitConfig
    from privet.data.prepare import Preparer

    host = _host()
    data_mb = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / (1 << 20)
    if kind == "text":
        source = host.make("source", "text.jsonl", {"paths": [str(data)], "chunk_mb": 8})
        cleaners = [host.make("cleaner", "text.strip_html"), host.make("cleaner", "text.normalize"),
                    host.make("cleaner", "text.redact_pii"),
                    host.make("cleaner", "text.dedupe", {"method": "minhash", "threshold": 0.9}),
                    host.make("cleaner", "text.length_filter", {"min_chars": 5, "max_chars": 20000})]
        model = host.make("model", "text.classifier", {"arch": "bag", "tokenizer": TOKENIZER})
        split = SplitConfig(method="random", val=0.1)
    else:
        source = host.make("source", "timeseries.csv", {
            "paths": [str(data)], "time_column": "timestamp", "series_column": "series",
            "target_columns": ["value"], "split_time": "2021-06-01T00:00:00",
            "chunk_mb": min(8.0, max(0.25, data_mb / 16))})
        cleaners = [host.make("cleaner", "timeseries.outliers", {"method": "sigma", "action": "clip",
                                                                  "exclude": ["value"]}),
                    host.make("cleaner", "timeseries.impute", {"method": "mean", "exclude": ["value"]}),
                    host.make("cleaner", "timeseries.calendar")]
        model = host.make("model", "timeseries.lstm", {"targets": ["value"], "input_length": 48,
                                                       "horizon": 12, "frequency": "1h",
                                                       "stride": int(os.environ.get("BENCH_TS_STRIDE", "1"))})
        split = SplitConfig(method="field", field="split")
    config = DataConfig(source=ComponentSpec("x"), split=split, prepare_workers=workers,
                        max_bad_fraction=0.5)
    started = time.perf_counter()
    prepared = Preparer(config, source, cleaners, model, seed=0, fingerprint_extra={}).prepare(cache)
    prep_s = time.perf_counter() - started
    if kind == "text":  # every kept text was encoded into the cache
        assert sum(prepared.meta["examples"].values()) == prepared.meta["kept"]
        assert all("token_ids" in t.column_names for s in ("train", "val", "test")
                   for t in prepared.tables[s]._open()), "texts without token_ids"
    return {"seconds": prep_s, "prep_s": prep_s,
            "read": prepared.meta["read"], "kept": prepared.meta["kept"],
            "dropped": prepared.meta["dropped"], "workers": prepared.meta["workers"],
            "timings": prepared.meta["timings"],
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            **_cpu()}


def _cpu() -> dict:
    """CPU seconds of this process and of its finished children: steadier than wall time
    on a shared machine, and they show which process does the work."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"cpu_s": me.ru_utime + me.ru_stime, "workers_cpu_s": kids.ru_utime + kids.ru_stime}


def _floor(kind: str, data: Path) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    pa.set_cpu_count(max(pa.cpu_count(), 1))
    started = time.perf_counter()
    rows = 0
    if kind == "text":
        from privet_text.tokenizer import TextTokenizer, TokenizerOptions

        sample = [t for f in sorted(data.glob("*.jsonl"))[:1]
                  for t in pjson.read_json(f).column("text").to_pylist()[:20000]]
        tok = TextTokenizer.train(sample, TokenizerOptions(**TOKENIZER)).hf
        started = time.perf_counter()  # the tokenizer's training is not part of the floor
        for f in sorted(data.glob("*.jsonl")):
            texts = pjson.read_json(f).column("text").to_pylist()
            rows += len(texts)
            for i in range(0, len(texts), 4096):
                tok.encode_batch(texts[i:i + 4096], add_special_tokens=False)
    else:
        rows = sum(pcsv.read_csv(f).num_rows for f in sorted(data.glob("*.csv")))
    return {"seconds": time.perf_counter() - started, "read": rows,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "workers": "all",
            **_cpu()}


def _child(args: argparse.Namespace) -> None:
    kind, what, data, cache = args.child
    if what == "floor":
        out = _floor(kind, Path(data))
    else:
        out = _prepare(kind, Path(data), Path(cache), int(what.rstrip("c")))
        out["workers"] = "1 (1 core)" if what.endswith("c") else out["workers"]
    print(json.dumps(out))


def _measure(kind: str, what: str, data: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, what, str(data), str(cache)]
    env = dict(os.environ)
    if what.endswith("c"):  # one core: the thread pools of pyarrow and tokenizers size to it
        first = min(os.sched_getaffinity(0))
        cmd = ["taskset", "-c", str(first), *cmd]
        env.update(RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {what} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _settle(folder: Path, kind: str, seconds: float) -> None:
    """Start each run from the same state: no cache of an earlier run on disk, and its
    writes flushed. Without this the kernel writes the last run's gigabytes back during
    the next one, which pays for them: on the 1 GB series the 2-worker run, which comes
    after the one-process run, took 18.6-22.5 s unsettled and 13.3-16.0 s settled."""
    for old in folder.glob(f"cache-{kind}-*"):
        shutil.rmtree(old, ignore_errors=True)
    os.sync()
    time.sleep(seconds)


def _row(name: str, r: dict, mb: float, single: float | None) -> str:
    speedup = f"{single / r['seconds']:.2f}x" if single else ""
    return (f"| {name} | {r['workers']} | {r['seconds']:.1f} | {r['read'] / r['seconds']:,.0f} | "
            f"{mb / r['seconds']:.2f} | {r['rss_mib']:.0f} | {r.get('workers_rss_mib', 0):.0f} | {speedup} |")


def _median(results: list[dict]) -> dict:
    """The run of median seconds (the whole result of one run, so its columns agree)."""
    return sorted(results, key=lambda r: r["seconds"])[len(results) // 2]


def _median_of(results: list[dict], key: str) -> float:
    values = sorted(r[key] for r in results)
    return values[len(values) // 2]


def _measure_kind(kind: str, args: argparse.Namespace, loads: list[float]) -> list[str]:
    """Table rows for one modality: floor, 1 worker and N workers, interleaved, medians."""
    lines: list[str] = []
    data = args.dir / kind
    if not (args.reuse and data.is_dir()):
        shutil.rmtree(data, ignore_errors=True)
        if kind == "text":
            make_text_corpus(data, args.mb, args.files)
        else:
            make_csv(data / "series.csv", args.mb)
    mb = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 1e6
    runs: dict[str, list[dict]] = {"floor": [], "1c": [], "1": [], "n": []}
    for r in range(args.repeats):  # interleaved: a change of load hits all alike
        for key, what in (("floor", "floor"), ("1c", "1c"), ("1", "1"), ("n", str(args.workers))):
            _settle(args.dir, kind, args.settle)
            runs[key].append(_measure(kind, what, data, args.dir / f"cache-{kind}-{key}"))
        loads.append(os.getloadavg()[0])
        print(f"{kind} round {r + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.1f} s" for k, v in runs.items())
              + f"; load {loads[-1]:.1f}", file=sys.stderr)
    floor, core, one, many = (_median(runs[k]) for k in ("floor", "1c", "1", "n"))
    if kind == "timeseries":
        kind = f"timeseries (stride {args.stride})"
    lines.append(_row(f"{kind}: floor (pyarrow{' + tokenizers' if kind == 'text' else ''})", floor, mb, None))
    lines.append(_row(f"{kind}: Privet, one process on one core", core, mb, None))
    lines.append(_row(f"{kind}: Privet, one process, all cores for library threads", one, mb, core["seconds"]))
    lines.append(_row(f"{kind}: Privet", many, mb, core["seconds"]))
    lines.append(f"| {kind}: Privet N workers / floor | | | {floor['seconds'] / many['seconds']:.2f}x | | | | |")
    lines.append(f"| {kind}: Privet N workers / 1 process, all cores | | | "
                 f"{one['seconds'] / many['seconds']:.2f}x | | | | |")
    for r in (core, one, many):
        print(f"{kind} {r['workers']} workers (median run): prep {r['prep_s']:.1f} s {r['timings']}; "
              f"CPU s: this process {r['cpu_s']:.1f}, workers "
              f"{r['workers_cpu_s']:.1f}; dropped {r['dropped']}", file=sys.stderr)
    lines.append(f"| {kind}: CPU s of the preparing process, median (1 / N workers) | | "
                 f"{_median_of(runs['1'], 'cpu_s'):.1f} / {_median_of(runs['n'], 'cpu_s'):.1f} | | | | "
                 f"{_median_of(runs['n'], 'workers_cpu_s'):.1f} (workers) | |")
    return lines


def main() -> None:
    from privet.data.parallel import usable_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1024.0)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--dir", type=Path, default=Path("/tmp/privet-bench-prep"))
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (floor, 1 worker, N workers), interleaved; medians reported")
    parser.add_argument("--kinds", default="text,timeseries", help="comma-separated: text, timeseries")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a corpus already generated in --dir (same --mb and --files)")
    parser.add_argument("--stride", type=int, default=1,
                        help="time series: rows between window starts (1: a window per row)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds of rest before each run, after the last run's cache is removed and synced")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    os.environ["BENCH_TS_STRIDE"] = str(args.stride)  # read by the measured child processes
    if not args.reuse:
        shutil.rmtree(args.dir, ignore_errors=True)
    lines = ["| run | workers | seconds | records/s | MB/s | peak RSS MiB | workers' peak RSS MiB | vs one core |",
             "|---|---|---|---|---|---|---|---|"]
    loads: list[float] = []
    for kind in args.kinds.split(","):
        lines += _measure_kind(kind, args, loads)
    lines[:0] = [f"Machine: {machine()}, load average {min(loads):.1f}-{max(loads):.1f} over the runs; "
                 f"{date.today()}; corpus {args.mb:g} MB per modality; median of {args.repeats} "
                 f"interleaved runs.", ""]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        replace_results(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", table + "\n",
                        "<!-- bench_prep:begin -->", "<!-- bench_prep:end -->")


if __name__ == "__main__":
    main()
