"""Fixtures of the serve tests: one tiny ONNX bundle per session, real uvicorn servers.

``serve`` starts a real server on a free loopback port in a thread of the test process
(the same uvicorn as ``privet serve``) and returns its base URL; tests talk HTTP to it
with httpx. Tokens are built with PyJWT, as an identity provider would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from privet.testing import make_test_host

TESTS = Path(__file__).resolve().parents[1]
SECRET = "s" * 24 + "-test-secret-0123456789"
AUDIENCE = "privet-test"
ROLES = {"roles": {
    "analyst": {"models": ["tiny"], "actions": ["predict", "list"]},
    "viewer": {"models": ["*"], "actions": ["list"]},
    "ops": {"models": [], "actions": ["metrics"]},
    "root": {"models": ["*"], "actions": ["admin"]},
}}


@pytest.fixture(scope="session")
def serve_host() -> Any:
    host = make_test_host()
    host.load_path(TESTS)
    return host


@pytest.fixture(scope="session")
def tiny_bundle(serve_host: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny plugin's MLP, trained one epoch and exported to ONNX by the engine."""
    from privet.train.engine import run_from_config

    root = tmp_path_factory.mktemp("serve")
    config = {"name": "tiny", "seed": 3, "runs_dir": str(root / "runs"),
              "plugins": {"paths": [str(TESTS)]},
              "data": {"source": {"name": "tiny.blobs", "options": {"n": 120, "features": 8}},
                       "cleaners": ["tiny.scale"], "split": {"val": 0.2}},
              "model": {"name": "tiny.mlp"},
              "train": {"epochs": 1, "batch_size": 32, "progress": "none", "device": "cpu"},
              "export": {"formats": ["onnx"]}}
    run_dir, _ = run_from_config(config, host=serve_host, base_dir=root)
    return run_dir / "export"


@pytest.fixture(scope="session")
def served(serve_host: Any, tiny_bundle: Path) -> dict[str, Any]:
    pytest.importorskip("fastapi")  # the privet[serve] extra; the audit log's own tests need none
    from privet.serve.models import load_models

    return load_models([str(tiny_bundle)], serve_host)


@pytest.fixture(scope="session")
def records(serve_host: Any) -> list[dict]:
    source = serve_host.make("source", "tiny.blobs", {"n": 40, "features": 8, "seed": 7})
    return [r for s in source.shards() for r in source.read(s)]


def _token(sub: str = "alice", roles: Any = ("analyst",), *, key: Any = SECRET, algorithm: str = "HS256",
          exp_in: float = 300, **claims: Any) -> str:
    """A signed JWT as an identity provider would issue it."""
    import jwt

    now = int(time.time())
    body = {"sub": sub, "roles": list(roles), "aud": AUDIENCE, "iat": now, "exp": now + exp_in, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture(scope="session")
def jwt_kit() -> Any:
    """Token helpers for tests: ``kit.token(...)``, ``kit.bearer(tok)``, ``kit.SECRET``..."""
    import types

    return types.SimpleNamespace(token=_token, bearer=bearer, SECRET=SECRET, AUDIENCE=AUDIENCE,
                                 auth=lambda **kw: bearer(_token(**kw)))


@pytest.fixture
def serve(served: dict[str, Any]) -> Iterator[Callable[..., str]]:
    """``serve(settings=..., verifier=..., policy=..., audit=..., ssl_context=...)`` -> URL."""
    from privet.serve.app import Gateway, ServeSettings, create_app
    from privet.serve.auth import Policy, TokenVerifier
    from privet.serve.server import BackgroundServer, free_port, uvicorn_config

    started: list[BackgroundServer] = []

    def start(*, settings: ServeSettings | None = None, verifier: Any = "default", policy: Any = None,
              audit: Any = None, ssl_context: Any = None, models: dict | None = None) -> str:
        if verifier == "default":
            verifier = TokenVerifier(key=SECRET.encode(), algorithms=("HS256",), audience=AUDIENCE, leeway=0)
        if policy is None:
            policy = Policy.allow_all() if verifier is None else _policy()
        gateway = Gateway(models if models is not None else served, settings or ServeSettings(),
                          verifier=verifier, policy=policy, audit=audit)
        port = free_port()
        server = BackgroundServer(uvicorn_config(create_app(gateway), "127.0.0.1", port,
                                                 ssl_context=ssl_context, log_level="warning"))
        started.append(server.start())
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    yield start
    for server in started:
        server.stop()


def _policy() -> Any:
    from privet.serve.auth import Grant, Policy

    return Policy({name: Grant(frozenset(g["models"]), frozenset(g["actions"]))
                   for name, g in ROLES["roles"].items()})
