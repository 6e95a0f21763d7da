"""Records file-system calls on a runs folder made by a core module other than storage.py.

Put on ``PYTHONPATH`` by tests/federate/test_federate.py so that the coordinator and
every client process it starts are watched (the same audit as
tests/core/test_storage_seam.py, which watches a single process). ``PRIVET_SEAM_RUNS``
names the runs folder, ``PRIVET_SEAM_OUT`` the file each finding is appended to.
"""

import os
import sys
import sysconfig

_RUNS = os.environ.get("PRIVET_SEAM_RUNS")
_OUT = os.environ.get("PRIVET_SEAM_OUT")
_EVENTS = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir",
           "os.symlink", "shutil.rmtree", "os.chmod"}


def _install() -> None:
    runs = os.path.realpath(_RUNS)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    core = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.realpath(__file__)))), "..", "core", "privet")
    core = os.path.realpath(core)
    busy = []

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
        if busy or event not in _EVENTS or not args:
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
            busy.append(1)
            try:
                with open(_OUT, "a") as fh:
                    fh.write(f"{os.path.relpath(name, core)}:{line} {event} "
                             f"{os.path.relpath(p, runs)}\n")
            finally:
                busy.pop()

    sys.addaudithook(hook)
    with open(_OUT + ".watched", "a") as fh:  # proof the process was watched
        fh.write(f"{os.getpid()} {' '.join(sys.argv[:3])}\n")


if _RUNS and _OUT:
    _install()
