"""Object storage: JSONL read throughput through the source, S3 (loopback) vs local disk,
and checkpoint save time, S3 vs local.

    python benchmarks/bench_s3.py --mb 1024          # the issue's 1 GB
    python benchmarks/bench_s3.py --mb 256 --s3fs /tmp/s3fs-bench

The S3 server is moto's (``moto_server``) in its own process on 127.0.0.1, so it does not
share the reader's GIL; it is a pure-Python server, so the S3 numbers are a lower bound
for the client (a real Ceph RGW or MinIO serves far faster). The same JSONL file is read
through the built-in ``jsonl`` source (``privet.io``: ranged GETs of 32 MiB for s3://)
from local disk and from the bucket, one stream and as byte-range shards read by
``--workers`` processes. With ``--s3fs PATH`` (a folder where ``pip install --target PATH
s3fs`` put fsspec/s3fs) the same object is also read by s3fs, the alternative filesystem
layer, line by line, for the choice recorded in docs/object-storage.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def make_jsonl(path: Path, mb: int) -> int:
    """~``mb`` MiB of records like a text classifier's (a sentence, a label, features)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    target = mb << 20
    n = 0
    with open(path, "w") as fh:
        while fh.tell() < target:
            rows = [json.dumps({"text": " ".join(rng.choices(words, k=30)), "label": rng.randrange(5),
                                "x": [round(rng.random(), 4) for _ in range(8)]}) for _ in range(2000)]
            fh.write("\n".join(rows) + "\n")
            n += len(rows)
    return n


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def read_source(paths: list[str], chunk_mb: float = 0.0) -> tuple[int, float]:
    """Records read through the built-in jsonl source, and seconds."""
    from privet.testing import make_test_host

    source = make_test_host().make("source", "jsonl", {"paths": paths, "chunk_mb": chunk_mb})
    t0 = time.perf_counter()
    n = sum(1 for shard in source.shards() for _ in source.read(shard))
    return n, time.perf_counter() - t0


def _read_shard(args: tuple[str, int, int | None]) -> int:
    from privet.io import read_jsonl

    path, start, end = args
    return sum(1 for _ in read_jsonl(path, start=start, end=end))


def read_parallel(path: str, workers: int, chunk_mb: float) -> tuple[int, float]:
    """Byte-range shards of one file or object read by ``workers`` processes side by side."""
    from privet.io import byte_ranges

    t0 = time.perf_counter()
    ranges = [(path, a, b) for a, b in byte_ranges(path, int(chunk_mb * (1 << 20)))]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        n = sum(pool.map(_read_shard, ranges))
    return n, time.perf_counter() - t0


def read_s3fs(site: str, endpoint: str, key: str) -> tuple[int, float]:
    """The same object, line by line, through fsspec/s3fs (in a subprocess: its own botocore).

    s3fs' own line iteration (``for line in fh``) took minutes on 256 MiB here, so its
    file is read with the same request size (32 MiB blocks) through an ``io.BufferedReader``."""
    code = f"""
import io, json, time, s3fs
fs = s3fs.S3FileSystem(endpoint_url={endpoint!r})  # credentials from the AWS_* variables
t0 = time.perf_counter(); n = 0
with fs.open({key!r}, "rb", block_size=32 << 20) as raw:  # requests as privet.io makes
    for line in io.BufferedReader(raw, 32 << 20):
        json.loads(line); n += 1
print(json.dumps([n, time.perf_counter() - t0]))
"""
    env = {**os.environ, "PYTHONPATH": site}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    n, s = json.loads(out.stdout.strip().splitlines()[-1])
    return n, s


def checkpoint_times(folder: Path, bucket: str, repeats: int = 3) -> dict[str, float]:
    """Seconds to save one checkpoint of a ~25 M-parameter model, local vs s3."""
    import torch

    from privet.storage import Storage, mirror
    from privet.train.checkpoint import CheckpointManager, capture_rng

    module = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(6)])
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.randn(2, 2048)).sum().backward()
    optimizer.step()
    tensors, plain = capture_rng()
    state = {"rng": tensors, "optimizer": optimizer.state_dict()}
    plain = {"rng": plain, "loop": {"step": 1}}
    out = {}
    for where in ("local", "s3"):
        root = folder / where
        Storage(root).makedirs()
        if where == "s3":
            mirror(root, f"s3://{bucket}/runs/bench")
        manager = CheckpointManager(Storage(root), keep_last=1)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            manager.save(i + 1, module, state, plain)
            times.append(time.perf_counter() - t0)
        out[where] = min(times)
        out[f"{where}_mb"] = Storage(root).size("checkpoints") / (1 << 20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the JSONL file (MiB)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the byte-range read")
    parser.add_argument("--chunk-mb", type=float, default=64.0, help="byte-range shard size")
    parser.add_argument("--s3fs", default=None, help="folder holding fsspec/s3fs (pip --target)")
    parser.add_argument("--endpoint", default=None,
                        help="a real store (Ceph RGW, MinIO) instead of moto; credentials from "
                             "the AWS_* variables; bucket 'bench' is created if missing")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    if args.endpoint:
        proc, endpoint = None, args.endpoint
    else:
        os.environ.update(ACCESS)
        proc, endpoint = start_server()
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    try:
        import boto3

        local = tmp / "data.jsonl"
        records = make_jsonl(local, args.mb)
        size_mb = local.stat().st_size / (1 << 20)
        client = boto3.client("s3", endpoint_url=endpoint)
        if "bench" not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket="bench")
        t0 = time.perf_counter()
        client.upload_file(str(local), "bench", "data/data.jsonl")
        upload_s = time.perf_counter() - t0
        url = "s3://bench/data/data.jsonl"
        rows = []
        for name, fn in (("local, 1 stream", lambda: read_source([str(local)])),
                         ("s3 (pyarrow), 1 stream", lambda: read_source([url])),
                         (f"local, {args.workers} workers x {args.chunk_mb:g} MiB ranges",
                          lambda: read_parallel(str(local), args.workers, args.chunk_mb)),
                         (f"s3 (pyarrow), {args.workers} workers x {args.chunk_mb:g} MiB ranges",
                          lambda: read_parallel(url, args.workers, args.chunk_mb))):
            n, s = fn()
            assert n == records, (name, n, records)
            rows.append((name, n / s, size_mb / s, s))
            print(f"  {name}: {s:.2f} s", flush=True)
        if args.s3fs:
            n, s = read_s3fs(args.s3fs, endpoint, "bench/data/data.jsonl")
            assert n == records
            rows.append(("s3 (fsspec/s3fs), 1 stream", n / s, size_mb / s, s))
        print(f"JSONL: {size_mb:.0f} MiB, {records} records; boto3 upload to moto {upload_s:.1f} s")
        print(f"{'read':<42} {'records/s':>11} {'MB/s':>7} {'s':>7}")
        for name, rps, mbs, s in rows:
            print(f"{name:<42} {rps:>11,.0f} {mbs:>7.1f} {s:>7.2f}")
        ck = checkpoint_times(tmp / "ckpt", "bench")
        print(f"checkpoint save ({ck['local_mb']:.0f} MiB): local {ck['local']:.2f} s, "
              f"s3 {ck['s3']:.2f} s (best of 3)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
