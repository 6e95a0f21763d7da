"""TLS for ``privet serve``: TLS 1.3 only, optional client certificates (mTLS).

The context is built here rather than by uvicorn's options, which cannot set a minimum
protocol version: a client offering only TLS 1.2 fails the handshake.
"""

from __future__ import annotations

import ssl
from typing import Any

from ..errors import UsageError


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context: minimum and maximum TLS 1.3; with ``client_ca`` a client
    certificate signed by it is required (the handshake fails without one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise UsageError(f"--tls-cert {cert} / --tls-key {key}: cannot load them ({err})") from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as err:
            raise UsageError(f"--tls-client-ca {client_ca}: cannot load it ({err})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


def context_factory(context: ssl.SSLContext) -> Any:
    """uvicorn's ``ssl_context_factory``: always our context, never its default one."""

    def factory(config: Any, default: Any) -> ssl.SSLContext:
        return context

    return factory
