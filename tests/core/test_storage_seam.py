"""Every read and write of a run folder goes through ``privet.storage``.

That is the seam where encryption at rest and object stores plug in: a module of the
core that opens a run-folder path itself would write plaintext around it. This test runs
a real pipeline (prepare, train, checkpoint, resume, export) under a Python audit hook
that records each filesystem call on the runs folder, and fails when the first frame
outside the standard library is a ``privet`` module other than ``privet/storage.py``.
Third-party libraries handed a path by the storage module (torch, safetensors, pyarrow,
TensorBoard) are the documented exception: they need a real file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r'''
    import json, os, sys, sysconfig
    runs = os.path.realpath(sys.argv[1])
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    import privet
    core = os.path.dirname(os.path.realpath(privet.__file__))
    seen = []
    EVENTS = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir",
              "os.symlink", "shutil.rmtree", "os.chmod"}

    def caller():
        f = sys._getframe(2)
        while f is not None:
            name = f.f_code.co_filename
            real = os.path.realpath(name) if not name.startswith("<") else name
            if name.startswith("<") or (real.startswith(stdlib) and "site-packages" not in real):
                f = f.f_back
                continue
            return real, f.f_lineno
        return None, None

    def hook(event, args):
        if event not in EVENTS or not args:
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        try:
            p = os.path.realpath(os.path.abspath(os.fsdecode(path)))
        except Exception:
            return
        if not p.startswith(runs):
            return
        name, line = caller()
        if name and name.startswith(core) and not name.endswith(os.sep + "storage.py"):
            seen.append(f"{os.path.relpath(name, core)}:{line} {event} {os.path.relpath(p, runs)}")

    sys.addaudithook(hook)
    from privet.cli import main
    for argv in json.loads(sys.argv[2]):
        try:
            main(argv)
        except SystemExit as exit:
            if exit.code not in (0, None):
                print("command failed:", argv, exit.code, file=sys.stderr)
                sys.exit(3)
    print(json.dumps(sorted(set(seen))))
''')


@pytest.mark.slow
def test_no_core_module_touches_a_run_folder_without_the_storage_module(tmp_path):
    config = {
        "name": "seam", "seed": 3, "runs_dir": "runs",
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "tiny.blobs", "options": {"n": 120, "features": 4}},
                 "cleaners": ["tiny.scale"]},
        "model": {"name": "tiny.mlp", "options": {"hidden": 8}},
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "progress": "none",
                  "checkpoint": {"every_n_steps": 4}},
        "export": {"formats": ["onnx"]},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    runs = tmp_path / "runs"
    commands = [["run", str(tmp_path / "pipeline.yaml")],
                ["resume", str(runs / "seam")],
                ["export", str(runs / "seam")]]
    env = {"PRIVET_LOAD_PLUGINS": "", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(runs), json.dumps(commands)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (runs / "seam" / "export" / "bundle.json").exists()
    bypasses = json.loads(result.stdout.strip().splitlines()[-1])
    assert bypasses == [], "run-folder I/O outside privet.storage:\n" + "\n".join(bypasses)
