"""JWT auth and roles against a real server: each case of the matrix has its status."""

from __future__ import annotations

import json

import httpx
import pytest


def predict(url: str, records: list, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records[:2]},
                      headers=headers or {}, timeout=10)


MATRIX = {  # case -> (token options, or a raw header; expected status)
    "no-token": (None, 401),
    "basic-auth": ("Basic YWxpY2U6cHc=", 401),
    "garbage": ("Bearer not.a-token", 401),
    "expired": ({"exp_in": -120}, 401),
    "wrong-signature": ({"key": "x" * 40}, 401),
    "wrong-audience": ({"aud": "someone-else"}, 401),
    "not-yet-valid": ({"nbf": 9_999_999_999}, 401),
    "alg-none": ({"algorithm": "none", "key": None}, 401),
    "no-subject": ({"sub": None}, 401),
    "role-without-predict": ({"roles": ["viewer"]}, 403),
    "role-not-in-file": ({"roles": ["stranger"]}, 403),
    "right-role": ({"roles": ["analyst"]}, 200),
    "admin-role": ({"roles": ["root"]}, 200),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_auth_matrix(serve, records, jwt_kit, case):
    spec, status = MATRIX[case]
    headers = {} if spec is None else {"Authorization": spec} if isinstance(spec, str) else jwt_kit.auth(**spec)
    response = predict(serve(), records, headers)
    assert response.status_code == status
    if status == 401:
        assert response.json() == {"error": "unauthorized"}  # which check failed is not said
        assert response.headers["www-authenticate"] == "Bearer"
    elif status == 403:
        assert response.json() == {"error": "forbidden"}
    else:
        assert [p["index"] for p in response.json()["predictions"]] == [0, 1]


def test_roles_scope_models_and_actions(serve, records, jwt_kit):
    url = serve()
    analyst, viewer, ops, root = (jwt_kit.auth(roles=[r]) for r in ("analyst", "viewer", "ops", "root"))
    assert [m["name"] for m in httpx.get(f"{url}/v1/models", headers=viewer).json()["models"]] == ["tiny"]
    assert httpx.get(f"{url}/v1/models", headers=ops).status_code == 403
    assert httpx.get(f"{url}/metrics", headers=analyst).status_code == 403
    assert httpx.get(f"{url}/metrics", headers=ops).status_code == 200
    # a model the role does not name is refused whether it exists or not: no probing
    body = {"records": records[:1]}
    assert httpx.post(f"{url}/v1/models/other:predict", json=body, headers=analyst).status_code == 403
    assert httpx.post(f"{url}/v1/models/other:predict", json=body, headers=root).status_code == 404
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no token
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}


def test_rs256_public_key_refuses_other_issuers_and_hmac_confusion(serve, records, jwt_kit, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from privet.serve.auth import verifier_from_options

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa.pub"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    verifier = verifier_from_options(secret_file=None, public_key=str(pem), jwks_file=None,
                                     audience=jwt_kit.AUDIENCE, issuer="https://idp.example", leeway=5)
    url = serve(verifier=verifier)
    iss = "https://idp.example"
    assert predict(url, records, jwt_kit.auth(key=key, algorithm="RS256", iss=iss)).status_code == 200
    assert predict(url, records, jwt_kit.auth(key=key, algorithm="RS256", iss="https://evil")).status_code == 401
    assert predict(url, records, jwt_kit.auth(key=key, algorithm="RS256")).status_code == 401  # no iss
    # the public key itself as an HS256 secret (algorithm confusion) is refused
    forged = _hs256(pem.read_bytes(), {"sub": "eve", "roles": ["root"], "aud": jwt_kit.AUDIENCE,
                                       "iss": iss, "exp": 9_999_999_999})
    assert predict(url, records, jwt_kit.bearer(forged)).status_code == 401


def _hs256(secret: bytes, claims: dict) -> str:
    """An HS256 token built by hand (PyJWT refuses a PEM as an HMAC key, an attacker does not)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signing_input = f"{b64(header)}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_es256_jwks_picks_the_key_by_kid(serve, records, jwt_kit, tmp_path):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from privet.serve.auth import verifier_from_options

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    verifier = verifier_from_options(secret_file=None, public_key=None, jwks_file=str(jwks),
                                     audience=jwt_kit.AUDIENCE, issuer=None, leeway=5)
    url = serve(verifier=verifier)
    claims = {"sub": "bob", "roles": ["analyst"], "aud": jwt_kit.AUDIENCE, "exp": 9_999_999_999}
    good = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
    assert predict(url, records, jwt_kit.bearer(good)).status_code == 200
    stranger = ec.generate_private_key(ec.SECP256R1())
    for kid in ("k1", "k2"):
        forged = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": kid})
        assert predict(url, records, jwt_kit.bearer(forged)).status_code == 401


def test_bad_auth_setups_are_one_clear_error(tmp_path, monkeypatch):
    from privet.errors import ConfigError, UsageError
    from privet.serve.auth import Policy, verifier_from_options

    options = {"public_key": None, "jwks_file": None, "audience": None, "issuer": None, "leeway": 0}
    monkeypatch.setenv("PRIVET_JWT_SECRET", "short")
    with pytest.raises(UsageError, match="at least 32 bytes"):
        verifier_from_options(secret_file=None, **options)
    (tmp_path / "secret").write_text("y" * 40 + "\n")
    with pytest.raises(UsageError, match="give one JWT key"):  # the file and the variable
        verifier_from_options(secret_file=None, **{**options, "public_key": str(tmp_path / "secret")})
    monkeypatch.delenv("PRIVET_JWT_SECRET")
    assert verifier_from_options(secret_file=str(tmp_path / "secret"), **options).key == b"y" * 40
    with pytest.raises(UsageError, match="not a PEM public key"):
        verifier_from_options(secret_file=None, **{**options, "public_key": str(tmp_path / "secret")})
    roles = tmp_path / "roles.yaml"
    roles.write_text("roles:\n  analyst: {models: [tiny], actions: [predict, delete]}\n")
    with pytest.raises(ConfigError, match=r"roles\.analyst\.actions.*delete"):
        Policy.load(roles)
    roles.write_text("roles: [analyst]\n")
    with pytest.raises(ConfigError, match="'roles' mapping"):
        Policy.load(roles)
