"""Helpers of the packaging tests: building the distributions, fresh virtualenvs holding them.

The ``dists`` fixture builds every distribution (sdist, then the wheel from that sdist, as
``python -m build`` does for a release) once per test session, from a copy of the
source tree, so no build artefact is written into the checkout. Under pytest-xdist the
workers share one build (a file lock in the session's shared temporary folder).

The ``make_venv`` fixture creates a virtualenv with nothing of this checkout in it, installs the
given wheels there with pip (not ``-e``), and gives it torch and the other third-party
packages WITHOUT copying them (about 5 GB with CUDA's libraries): a ``.pth`` file adds
one folder of symbolic links to the packages of this interpreter's environment. That
folder holds only the transitive requirements of the wheels being installed, read from
the wheels' own metadata; never a ``privet*`` distribution or the editable finders
pointing at the source tree. So a dependency missing from a wheel's metadata, or a
file missing from a wheel, fails the tests that use it.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: distribution name -> (source folder relative to ROOT, top-level package, its folder there)
DISTRIBUTIONS = {
    "privet": (".", "privet", "core/privet"),
    "privet-text": ("plugins/text", "privet_text", "src/privet_text"),
    "privet-image": ("plugins/image", "privet_image", "src/privet_image"),
    "privet-timeseries": ("plugins/timeseries", "privet_timeseries", "src/privet_timeseries"),
    "privet-llm": ("plugins/llm", "privet_llm", "src/privet_llm"),
    "privet-dp": ("plugins/dp", "privet_dp", "src/privet_dp"),
}
#: Never copied for a build: caches anywhere, and in a distribution's own folder (the root,
#: plugins/NAME) its build output, environments and run folders.
_JUNK_ANYWHERE = ("__pycache__", ".pytest_cache")
_JUNK_AT_ROOTS = (".git", ".venv", ".tox", "build", "dist", "runs")


def _ignore(folder: str, names: list[str]) -> set[str]:
    at_root = Path(folder) in {ROOT / src for src, _p, _d in DISTRIBUTIONS.values()}
    return {n for n in names if n in _JUNK_ANYWHERE or n.endswith((".pyc", ".egg-info"))
            or (at_root and n in _JUNK_AT_ROOTS)}


class Dists:
    """The built sdists and wheels, by distribution name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def wheel(self, name: str) -> Path:
        return self._one(f"{name.replace('-', '_')}-*.whl")

    def sdist(self, name: str) -> Path:
        return self._one(f"{name.replace('-', '_')}-*.tar.gz")

    def _one(self, pattern: str) -> Path:
        found = sorted(self.folder.glob(pattern))
        assert len(found) == 1, f"expected one {pattern} in {self.folder}, found {found}"
        return found[0]


def source_version(name: str) -> str:
    """``__version__`` of a distribution's package, read from its source (the single source)."""
    src, _package, package_dir = DISTRIBUTIONS[name]
    tree = ast.parse((ROOT / src / package_dir / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no __version__ in {src}/{package_dir}/__init__.py")


def source_files() -> list[str]:
    """The files a release from this checkout would see: git's, less what .gitignore ignores.

    Files not yet added to git are included (a new module must not fail here only until
    it is committed); without git, every file less caches and build output.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, timeout=60)
    if listed.returncode == 0:
        names = [ROOT / rel for rel in listed.stdout.decode("utf-8").split("\0") if rel]
    else:
        names = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in _ignore(folder, dirs)]
            names += [Path(folder, f) for f in files]
    return sorted(p.relative_to(ROOT).as_posix() for p in names  # tracked but deleted: skipped
                  if p.is_file() and not _ignore(str(p.parent), [p.name]))


def copy_sources(dest: Path) -> None:
    """A copy of :func:`source_files`, to build from without writing into the checkout."""
    for rel in source_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


def build_all(out: Path, work: Path) -> None:
    """Copy the source tree, then ``python -m build`` each distribution into ``out``."""
    copy_sources(work / "src")
    for name, (src, _package, _dir) in DISTRIBUTIONS.items():
        # --no-isolation: the build backend of this environment, no network
        done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                               str(work / "src" / src)],
                              capture_output=True, text=True, timeout=600, cwd=work)
        assert done.returncode == 0, f"building {name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


# --- virtualenvs ---------------------------------------------------------------------------

def wheel_requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` of a wheel, from the METADATA inside it."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
    return message.get_all("Requires-Dist") or []


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (*extras, ""))


def requirement_closure(roots: Iterable[str], provided: set[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that ``roots`` need, transitively (``provided``: skipped)."""
    todo = [req for req in map(Requirement, roots) if _applies(req, ())]
    seen: dict[str, set[str]] = {}
    found: list[importlib.metadata.Distribution] = []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in provided or (name in seen and req.extras <= seen[name]):
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"{req} is needed by the wheels but not installed in this "
                                 f"environment ({sys.prefix}); run scripts/setup.sh") from None
        if name not in seen:
            found.append(dist)
        seen.setdefault(name, set()).update(req.extras)
        for line in dist.requires or []:
            sub = Requirement(line)
            if _applies(sub, req.extras):
                todo.append(sub)
    return found


def link_packages(dists: Iterable[importlib.metadata.Distribution], folder: Path) -> None:
    """Symbolic links in ``folder`` to every top-level file and folder of ``dists``."""
    folder.mkdir(parents=True)
    for dist in dists:
        files = dist.files
        assert files, f"{dist.metadata['Name']} has no RECORD: cannot tell its files"
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in files if f.parts[0] not in ("..", "__pycache__")}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)


class Venv:
    """A fresh virtualenv; ``run`` executes its ``bin/`` programs in a clean environment."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.path = path
        self.workdir = workdir
        self.site = Path(sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)}))
        own_bin = str(Path(sys.executable).parent)
        keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != own_bin]
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PRIVET_", "PIP_", "PYTEST_", "PYTHON", "VIRTUAL_ENV"))}
        self.env.update(PATH=os.pathsep.join([str(path / "bin"), *keep]), VIRTUAL_ENV=str(path),
                        PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PYTHONNOUSERSITE="1",
                        PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1",
                        XDG_CACHE_HOME=str(workdir / ".cache"), COLUMNS="120")

    def run(self, program: str, *args: str, cwd: Path | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
        """``bin/program args`` in ``cwd`` (default: the work folder, outside the checkout)."""
        done = subprocess.run([str(self.path / "bin" / program), *args], env=self.env,
                              cwd=cwd or self.workdir, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, (f"{program} {' '.join(args)} exited {done.returncode}\n"
                                          f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def pip_install(self, *args: str) -> subprocess.CompletedProcess:
        """pip install without any index: only the given files and what is already there."""
        return self.run("python", "-m", "pip", "install", "--no-index", "--no-cache-dir", "-q", *args)


