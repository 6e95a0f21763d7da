"""What ``pip install privet privet-text`` gives a user, tested from the built distributions.

Every distribution is built once (sdist, then the wheel from it) and checked as a release
would be (``twine check``, license, README, classifiers, version from ``__version__``,
every file of the package in the wheel). Then each modality is installed from its wheel
beside the core wheel alone, in a fresh virtualenv with nothing of this checkout on its
path, and driven as a user would: ``privet init`` -> ``privet run`` on a tiny generated
data set -> ``privet export`` -> ``privet predict``; and ``privet new plugin``'s package
is pip-installed beside the core wheel, listed by ``privet plugins``, and passes its own
tests. A file or a dependency missing from a wheel fails here (see conftest.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import email.parser
import json
import math
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from packaging_support import DISTRIBUTIONS, ROOT, Dists, Venv, source_files, source_version

pytestmark = pytest.mark.slow


def wheel_metadata(wheel: Path) -> tuple[email.message.Message, dict[str, bytes]]:
    """The METADATA of a wheel, and every file in it by archive name."""
    with zipfile.ZipFile(wheel) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    meta = next(n for n in files if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(files[meta].decode("utf-8")), files


def package_files(name: str) -> set[str]:
    """Every file of a distribution's package in the source tree (caches left out)."""
    src, package, package_dir = DISTRIBUTIONS[name]
    prefix = (Path(src) / package_dir).as_posix() + "/"
    return {f"{package}/{rel[len(prefix):]}" for rel in source_files() if rel.startswith(prefix)}


def test_every_distribution_passes_twine_check(dists: Dists) -> None:
    files = sorted(str(p) for p in dists.folder.iterdir())
    assert len(files) == 2 * len(DISTRIBUTIONS), files

    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == len(files), done.stdout


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_wheel_carries_license_readme_classifiers_version_and_every_package_file(
        dists: Dists, name: str) -> None:
    meta, files = wheel_metadata(dists.wheel(name))
    src, package, _dir = DISTRIBUTIONS[name]

    assert meta["Name"] == name
    assert meta["Version"] == source_version(name)
    assert meta["License-Expression"] == "Apache-2.0"
    info = f"{name.replace('-', '_')}-{meta['Version']}.dist-info"
    assert files[f"{info}/licenses/LICENSE"] == (ROOT / "LICENSE").read_bytes()
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / src / "README.md").read_text(encoding="utf-8")
    assert meta.get_payload().strip() == readme.strip()
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    # a data file left out of package-data (starter.yaml, the plugin template) fails here
    in_wheel = {n for n in files if n.startswith(f"{package}/")}
    assert in_wheel == package_files(name)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_sdist_carries_license_readme_and_pyproject(dists: Dists, name: str) -> None:
    sdist = dists.sdist(name)
    with tarfile.open(sdist) as tf:
        names = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO"} <= names
    assert sdist.name == f"{name.replace('-', '_')}-{source_version(name)}.tar.gz"


# --- a user's first session, per modality ---------------------------------------------------

def write_text_data(work: Path) -> Path:
    """Short reviews, positive or negative by a few words."""
    rng = random.Random(0)
    words = {"positive": "great wonderful excellent lovely superb".split(),
             "negative": "terrible awful horrible dreadful boring".split()}
    filler = "the product arrived today and it was quite as described overall".split()
    lines = []
    for _ in range(200):
        label = rng.choice(sorted(words))
        chosen = rng.sample(filler, 5) + rng.sample(words[label], 2)
        rng.shuffle(chosen)
        lines.append(json.dumps({"text": " ".join(chosen), "label": label}))
    (work / "data").mkdir()
    (work / "data" / "text.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    new = work / "new.jsonl"
    new.write_text('{"text": "great product, lovely"}\n{"text": "awful and boring"}\n')
    return new


def write_image_data(venv: Venv) -> Path:
    """Three classes of drawn shapes, with the plugin's own generator (as the starter says)."""
    venv.run("python", "-m", "privet_image.shapes", "data/images", "--size", "32",
             "--per-class", "12")
    return venv.workdir / "data" / "images" / "circle"


def write_series_data(work: Path) -> Path:
    """Hourly seasonal values around the starter's split time; predict input ends in the future."""
    t0 = dt.datetime(2024, 5, 25)
    rows = [{"timestamp": (t0 + dt.timedelta(hours=i)).isoformat(),
             "value": round(10 + 4 * math.sin(i / 24 * 2 * math.pi) + random.Random(i).gauss(0, 1), 3),
             "temperature": round(15 + random.Random(-i).gauss(0, 1), 3)} for i in range(400)]
    last = t0 + dt.timedelta(hours=399)
    future = [{"timestamp": (last + dt.timedelta(hours=h)).isoformat(), "value": "", "temperature": ""}
              for h in range(1, 13)]  # the starter's horizon: known covariates (calendar) only
    (work / "data").mkdir()
    for path, chosen in ((work / "data" / "series.csv", rows), (work / "new.csv", rows[-60:] + future)):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["timestamp", "value", "temperature"])
            writer.writeheader()
            writer.writerows(chosen)
    return work / "new.csv"


#: `-s` overrides that make each starter pipeline tiny; export is left to `privet export`.
SMALL = {
    "text": ["train.epochs=1", "model.options.hidden=16", "model.options.max_length=16",
             "model.options.tokenizer.vocab_size=200"],
    "image": ["train.epochs=1", "data.num_workers=0", "model.options.widths=[8, 16]",
              "model.options.input_size=32", "data.cleaners.3.options.size=36",
              "data.augmenters.0.options.size=32", "export=null"],
    "timeseries": ["train.epochs=1", "model.options.hidden_size=8", "export=null"],
}


def assert_installed_from_wheels(venv: Venv, packages: list[str]) -> None:
    """Each package imports from the venv's site-packages; nothing of the checkout is on sys.path."""
    probe = ("import json, sys, importlib; print(json.dumps({'path': sys.path, 'files': "
             f"{{p: importlib.import_module(p).__file__ for p in {packages!r}}}}}))")
    found = json.loads(venv.run("python", "-c", probe).stdout)
    for package, file in found["files"].items():
        assert Path(file).is_relative_to(venv.site), (package, file)
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(ROOT)], found["path"]


@pytest.mark.parametrize("modality", ["text", "image", "timeseries"])
def test_modality_installed_from_wheels_beside_the_core_alone_runs_end_to_end(
        make_venv, modality: str) -> None:
    venv = make_venv("privet", f"privet-{modality}")
    work = venv.workdir
    assert_installed_from_wheels(venv, ["privet", f"privet_{modality}"])
    version = venv.run("privet", "--version").stdout.splitlines()
    assert version == [f"privet, version {source_version('privet')}", "plugins:",
                       f"  privet-{modality} {source_version(f'privet-{modality}')} ({modality})"]

    venv.run("privet", "init", modality)
    new = {"text": lambda: write_text_data(work), "image": lambda: write_image_data(venv),
           "timeseries": lambda: write_series_data(work)}[modality]()
    overrides = [a for s in SMALL[modality] for a in ("-s", s)]
    venv.run("privet", "run", "pipeline.yaml", "--name", "smoke", "--progress", "none", *overrides)
    exported = venv.run("privet", "export", "runs/smoke", "--json")
    report = json.loads(exported.stdout)
    predicted = venv.run("privet", "predict", "runs/smoke/export", str(new), "--strict")

    assert (work / "runs" / "smoke" / "export" / "model.onnx").is_file(), report
    entries = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert entries and all("error" not in e for e in entries), entries
    assert "with onnx" in predicted.stderr


def test_new_plugin_installs_beside_the_core_wheel_and_its_tests_pass(make_venv) -> None:
    venv = make_venv("privet", tools=["pytest"])
    assert_installed_from_wheels(venv, ["privet"])
    assert venv.run("privet", "--version").stdout.splitlines()[1] == "plugins: none installed"

    venv.run("privet", "new", "plugin", "acme-demo")  # the template is package data
    venv.pip_install("--no-build-isolation", str(venv.workdir / "acme-demo"))
    listed = json.loads(venv.run("privet", "plugins", "--json").stdout)
    tests = venv.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
                     cwd=venv.workdir / "acme-demo")

    rows = {row["name"]: row for row in listed}
    assert rows["acme-demo"]["status"] == "loaded"
    assert rows["acme-demo"]["distribution"] == "acme-demo"
    assert rows["acme-demo"]["components"] == {"cleaner": ["acme-demo.lowercase"]}
    assert "2 passed" in tests.stdout
    assert_installed_from_wheels(venv, ["privet", "acme_demo"])
