"""Starting the gateway: the audit log, the app, and uvicorn (TLS context included).

``serve_forever`` is what ``privet serve`` runs; :class:`BackgroundServer` runs the same
server in a thread of this process (the tests and ``benchmarks/bench_serve.py``).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

import uvicorn

from ..errors import UsageError
from .tls import context_factory


def is_loopback(host: str) -> bool:
    """Whether ``host`` only ever reaches this machine (``localhost`` resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_audit(path: str, *, hmac_key: bytes, signing_key: Any = None, fsync: str = "interval",
               inputs_key: bytes | None = None) -> Any:
    """The hash-chained audit log of :mod:`privet.audit` at ``path``."""
    try:
        from ..audit import AuditLog
    except ImportError as err:
        raise UsageError(f"--audit-log needs privet.audit, which this install lacks ({err})") from None
    return AuditLog(path, hmac_key=hmac_key, signing_key=signing_key, fsync=fsync,
                    inputs_key=inputs_key)


def uvicorn_config(app: Any, host: str, port: int, *, ssl_context: Any = None,
                   log_level: str = "info", access_log: bool = False) -> uvicorn.Config:
    """uvicorn's settings: our TLS context if any, no server header, quiet access log."""
    options: dict[str, Any] = {}
    if ssl_context is not None:
        options["ssl_context_factory"] = context_factory(ssl_context)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                          server_header=False, proxy_headers=False, lifespan="on",
                          timeout_graceful_shutdown=10, **options)


def serve_forever(config: uvicorn.Config) -> None:
    """Run until SIGINT/SIGTERM; in-flight requests finish (and are audited) first."""
    sock = listening_socket(config.host, config.port)
    uvicorn.Server(config).run(sockets=[sock])


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another "
                         f"--host or --port") from None
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """A real uvicorn server in a thread of this process, stopped by :meth:`stop`."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="privet-serve")

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
