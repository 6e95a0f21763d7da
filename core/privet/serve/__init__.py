"""``privet serve``: a secure inference gateway for exported bundles.

The modules here import FastAPI, uvicorn, PyJWT, ``limits`` and ``prometheus_client``
(the ``privet[serve]`` extra); nothing outside this package imports them, so the core
stays lean and ``privet --help`` never loads them. :func:`require_extra` turns a missing
dependency into one line naming the extra.
"""

from __future__ import annotations

import importlib.util

from ..errors import UsageError

#: import name -> the distribution the extra installs
EXTRA_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "jwt": "pyjwt",
                 "limits": "limits", "prometheus_client": "prometheus-client"}


def require_extra() -> None:
    """Raise one :class:`UsageError` when a dependency of ``privet[serve]`` is missing."""
    missing = [dist for module, dist in EXTRA_MODULES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(f"privet serve needs {', '.join(missing)}: pip install 'privet[serve]'")
