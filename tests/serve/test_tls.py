"""TLS against a real server: TLS 1.3 only (a TLS 1.2 client is refused), and mTLS
refuses a client without a certificate from the configured CA."""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.org")
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key",
             "client": folder / "client.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


def client_context(pki, *, tls12_only: bool = False, cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(str(pki["client"]))
    return context


def handshake(url: str, context: ssl.SSLContext) -> str:
    """The negotiated protocol version, or raise the handshake's ssl.SSLError."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


def test_tls13_only_refuses_a_tls12_client(serve, pki, jwt_kit, records):
    from privet.serve.tls import server_context

    url = serve(ssl_context=server_context(str(pki["cert"]), str(pki["key"])))
    assert handshake(url, client_context(pki)) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(url, client_context(pki, tls12_only=True))
    with httpx.Client(verify=client_context(pki)) as client:
        response = client.post(f"{url}/v1/models/tiny:predict", json={"records": records[:1]},
                               headers=jwt_kit.auth())
    assert response.status_code == 200


def test_mtls_refuses_a_client_without_a_certificate(serve, pki):
    from privet.serve.tls import server_context

    url = serve(ssl_context=server_context(str(pki["cert"]), str(pki["key"]), str(pki["ca"])))
    with httpx.Client(verify=client_context(pki)) as client, pytest.raises(httpx.TransportError):
        client.get(f"{url}/healthz")
    with httpx.Client(verify=client_context(pki, cert=True)) as client:
        assert client.get(f"{url}/healthz").status_code == 200


def test_unreadable_tls_files_are_one_usage_error(tmp_path):
    from privet.errors import UsageError
    from privet.serve.tls import server_context

    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(UsageError, match="--tls-cert"):
        server_context(str(tmp_path / "bad.pem"), str(tmp_path / "bad.pem"))
