"""Who may call the gateway: JWT bearer tokens checked by PyJWT, roles mapped to rights.

The algorithm list is fixed by the server from the key it was given (HS256 for a
secret, RS256 or ES256 from the public key's type, the JWKS entry's own algorithm),
never read from the token, so a token cannot pick ``none`` or turn a public key into an
HMAC secret. ``exp`` and ``sub`` are required; ``aud`` and ``iss`` when configured;
``nbf`` when present; ``leeway`` seconds of clock skew are tolerated.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import attrs
import jwt

from ..errors import ConfigError, UsageError

#: Environment variable holding the HS256 secret.
SECRET_ENV = "PRIVET_JWT_SECRET"
#: Shortest HS256 secret accepted (RFC 7518 section 3.2: at least the hash size).
MIN_SECRET_BYTES = 32
#: What a role may be granted.
ACTIONS = ("predict", "list", "metrics", "admin")
#: Verified tokens remembered (by their exact text) so that a client's next request skips
#: the signature check; bounded, oldest forgotten first.
TOKEN_CACHE_SIZE = 4096


class AuthError(Exception):
    """A request that is not authenticated (401) or not allowed (403); no detail leaves."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.define(frozen=True)
class Principal:
    """The caller of one request: the token's subject and roles."""

    subject: str
    roles: tuple[str, ...] = ()


@attrs.define(frozen=True)
class Grant:
    """What one role may do: actions on models (``*`` is every model)."""

    models: frozenset[str]
    actions: frozenset[str]

    def allows(self, action: str, model: str | None) -> bool:
        if action not in self.actions and "admin" not in self.actions:
            return False
        return model is None or "*" in self.models or model in self.models


class Policy:
    """The roles file: role name -> :class:`Grant`. A role not in the file grants nothing."""

    def __init__(self, grants: dict[str, Grant]) -> None:
        self.grants = grants

    @classmethod
    def allow_all(cls) -> "Policy":
        """The policy of ``--insecure-no-auth``: the anonymous caller may do everything."""
        return cls({"anonymous": Grant(frozenset({"*"}), frozenset(ACTIONS))})

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        """Read ``{"roles": {NAME: {"models": [...], "actions": [...]}}}`` (YAML or JSON)."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read the roles file ({_first(err)})", file=str(path)) from None
        roles = raw.get("roles") if isinstance(raw, dict) else None
        if not isinstance(roles, dict) or not roles:
            raise ConfigError("the roles file needs a 'roles' mapping of role -> {models, actions}",
                              path="roles", file=str(path))
        return cls({str(name): _grant(spec, f"roles.{name}", path) for name, spec in roles.items()})

    def role_for(self, principal: Principal, action: str, model: str | None = None) -> str | None:
        """The first of the caller's roles that allows ``action`` on ``model``, or None."""
        for role in principal.roles:
            grant = self.grants.get(role)
            if grant is not None and grant.allows(action, model):
                return role
        return None


def _grant(spec: Any, where: str, path: Path) -> Grant:
    if not isinstance(spec, dict):
        raise ConfigError("a role is a mapping with 'models' and 'actions'", path=where, file=str(path))
    models, actions = spec.get("models"), spec.get("actions")
    for key, value in (("models", models), ("actions", actions)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("must be a list of names", path=f"{where}.{key}", file=str(path))
    unknown = sorted(set(actions) - set(ACTIONS))  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown action(s) {unknown}; choose from {list(ACTIONS)}",
                          path=f"{where}.actions", file=str(path))
    extra = sorted(set(spec) - {"models", "actions"})
    if extra:
        raise ConfigError(f"unknown key(s) {extra}", path=where, file=str(path))
    return Grant(frozenset(models), frozenset(actions))  # type: ignore[arg-type]


@attrs.define
class TokenVerifier:
    """Checks bearer tokens against one key (or a JWKS), with fixed algorithms."""

    key: Any = None
    algorithms: tuple[str, ...] = ()
    jwks: Any = None
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 30.0
    #: token text -> (principal, exp) of tokens that passed every check
    _verified: dict[str, tuple[Principal, float]] = attrs.field(factory=dict, init=False, repr=False)

    def principal(self, token: str) -> Principal:
        """The caller a valid token names; :class:`AuthError` 401 for any invalid token.

        A token verified before is answered from memory while its ``exp`` holds: its
        signature, audience, issuer and ``nbf`` cannot have changed (the key is the exact
        text, so any altered byte is a different, unverified token), and only time can
        make it invalid. A client reusing its token pays PyJWT's ~70 us once.
        """
        known = self._verified.get(token)
        if known is not None:
            if known[1] > time.time() - self.leeway:
                return known[0]
            self._verified.pop(token, None)
            raise AuthError(401, "invalid_token")
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(token, key, algorithms=list(algorithms), audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "sub"]})
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token") from None
        principal = Principal(str(claims["sub"]), _roles(claims.get("roles")))
        self._remember(token, principal, int(claims["exp"]))
        return principal

    def _remember(self, token: str, principal: Principal, exp: int) -> None:
        if len(self._verified) >= TOKEN_CACHE_SIZE:  # dicts keep insertion order
            self._verified.pop(next(iter(self._verified), ""), None)
        self._verified[token] = (principal, float(exp))

    def _key_for(self, token: str) -> tuple[Any, tuple[str, ...]]:
        if self.jwks is None:
            return self.key, self.algorithms
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self.jwks.keys
        matches = [k for k in keys if k.key_id == kid] if kid is not None else keys[:1] if len(keys) == 1 else []
        if not matches:
            raise jwt.InvalidKeyError("no key for this token")
        return matches[0].key, (matches[0].algorithm_name,)


def _roles(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def verifier_from_options(*, secret_file: str | None, public_key: str | None,
                          jwks_file: str | None, audience: str | None, issuer: str | None,
                          leeway: float) -> TokenVerifier | None:
    """The verifier the options name (exactly one key source), or None when none is given."""
    env_secret = os.environ.get(SECRET_ENV)
    sources = [s for s in (secret_file, public_key, jwks_file) if s]
    if len(sources) > 1 or (sources and env_secret and not secret_file):
        raise UsageError(f"give one JWT key: {SECRET_ENV} or --jwt-secret-file (HS256), "
                         f"--jwt-public-key or --jwks-file")
    common = {"audience": audience, "issuer": issuer, "leeway": leeway}
    if secret_file or env_secret:
        secret = _read(secret_file, "--jwt-secret-file").strip() if secret_file else env_secret.encode()  # type: ignore[union-attr]
        if len(secret) < MIN_SECRET_BYTES:
            where = secret_file or SECRET_ENV
            raise UsageError(f"{where}: the HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        return TokenVerifier(key=secret, algorithms=("HS256",), **common)
    if public_key:
        key = _public_key(public_key)
        return TokenVerifier(key=key, algorithms=(_algorithm_of(key, public_key),), **common)
    if jwks_file:
        return TokenVerifier(jwks=_jwks(jwks_file), **common)
    return None


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot read it ({_first(err)})") from None


def _public_key(path: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(_read(path, "--jwt-public-key"))
    except ValueError as err:
        raise UsageError(f"--jwt-public-key {path}: not a PEM public key ({_first(err)})") from None


def _algorithm_of(key: Any, path: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise UsageError(f"--jwt-public-key {path}: use an RSA (RS256) or P-256 EC (ES256) key")


def _jwks(path: str) -> Any:
    try:
        jwks = jwt.PyJWKSet.from_json(_read(path, "--jwks-file").decode("utf-8"))
    except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"--jwks-file {path}: not a usable JWKS ({_first(err)})") from None
    bad = [k.algorithm_name for k in jwks.keys if k.algorithm_name not in ("RS256", "ES256")]
    if bad:
        raise UsageError(f"--jwks-file {path}: only RS256 and ES256 keys are accepted, got {bad}")
    return jwks


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header; 401 when absent or malformed."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not re.fullmatch(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",
                                                      token.strip()):
        raise AuthError(401, "missing_token")
    return token.strip()


def _first(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]

