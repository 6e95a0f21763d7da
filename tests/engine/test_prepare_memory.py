"""Preparation streams: peak memory does not grow with the corpus (no list of all records)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Prepares the corpus in argv[1] into the cache argv[2] with argv[3] workers, then prints
# the peak RSS of this process (the one that merges, splits and writes) in MiB.
_PREPARE = """
import resource, sys
from pathlib import Path
import privet
from privet.builtins.sources import JsonLines
from privet.config import ComponentSpec, DataConfig
from privet.data.prepare import Preparer

class Plain(privet.Model):
    def build(self): raise NotImplementedError
    def encode(self, record): raise NotImplementedError
    def step(self, module, batch): raise NotImplementedError

class Lower(privet.Cleaner):
    name = "lower"
    def clean(self, record): return {**record, "text": record["text"].lower()}

if __name__ == "__main__":  # spawned workers import this file again
    config = DataConfig(source=ComponentSpec("jsonl"), shard_rows=2000, prepare_workers=int(sys.argv[3]))
    source = JsonLines(JsonLines.Options(paths=[Path(sys.argv[1])]))
    prepared = Preparer(config, source, [Lower()], Plain(), seed=0, fingerprint_extra={}).prepare(Path(sys.argv[2]))
    assert prepared.meta["workers"] == int(sys.argv[3])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _corpus(folder: Path, records: int, files: int = 4) -> int:
    folder.mkdir()
    size = 0
    per_file = records // files
    for f in range(files):
        lines = (json.dumps({"text": f"Record {f}-{i} " + "Lorem Ipsum dolor sit amet " * 6,
                             "label": i % 5}) for i in range(per_file))
        path = folder / f"part-{f}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        size += path.stat().st_size
    return size


def _peak_mib(data: Path, cache: Path, workers: int) -> float:
    script = cache.parent / "prepare_script.py"
    script.write_text(_PREPARE)
    out = subprocess.run([sys.executable, str(script), str(data), str(cache), str(workers)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_peak_memory_stays_flat_for_a_corpus_ten_times_bigger(tmp_path, workers):
    small = _corpus(tmp_path / "small", 6_000)
    big = _corpus(tmp_path / "big", 60_000)
    assert big > 9 * small > 9 * (1 << 20)

    small_peak = _peak_mib(tmp_path / "small", tmp_path / "c-small", workers)
    big_peak = _peak_mib(tmp_path / "big", tmp_path / "c-big", workers)

    # holding the big corpus' records as Python objects would take several times its
    # ~11 MB on disk (48 MB more, measured); streaming keeps the growth to allocator noise
    growth = big_peak - small_peak
    assert growth < max(8.0, 0.3 * (big - small) / (1 << 20)), (small_peak, big_peak)
