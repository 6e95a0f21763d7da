"""``privet serve BUNDLE [BUNDLE...]``: the inference gateway (``privet[serve]`` extra).

Safe by default: it refuses to start without JWT auth and a roles file (unless
``--insecure-no-auth`` on a loopback address) and refuses plain HTTP on any other
address (unless ``--insecure-plain-http``, for a TLS-terminating proxy on the host).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from ..cli import get_host
from ..errors import UsageError


@click.command()
@click.argument("bundles", metavar="BUNDLE [BUNDLE...]", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--jwt-secret-file", type=click.Path(dir_okay=False), default=None,
              help="HS256 secret (>= 32 bytes) in a file; or set PRIVET_JWT_SECRET.")
@click.option("--jwt-public-key", type=click.Path(dir_okay=False), default=None,
              help="RSA (RS256) or P-256 (ES256) public key, PEM, that signs the tokens.")
@click.option("--jwks-file", type=click.Path(dir_okay=False), default=None,
              help="A local JWKS file of RS256/ES256 keys, chosen by the token's kid.")
@click.option("--jwt-audience", default=None, help="Required 'aud' claim.")
@click.option("--jwt-issuer", default=None, help="Required 'iss' claim.")
@click.option("--jwt-leeway", type=click.FloatRange(0, 600), default=30.0, show_default=True,
              help="Seconds of clock skew tolerated on exp and nbf.")
@click.option("--roles-file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON: roles -> {models, actions} (predict, list, metrics, admin).")
@click.option("--insecure-no-auth", is_flag=True,
              help="No tokens at all; only on a loopback --host.")
@click.option("--insecure-plain-http", is_flag=True,
              help="Allow plain HTTP on a non-loopback --host (behind a TLS proxy).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, help="Server certificate chain (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="Its private key (PEM).")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False), default=None,
              help="Require client certificates signed by this CA (mTLS).")
@click.option("--rate-limit", default="100/second", show_default=True,
              help="Per token subject: N/second|minute|hour, or 'none'.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True)
@click.option("--max-records", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Records per request.")
@click.option("--request-timeout", type=click.FloatRange(min=0.001), default=30.0, show_default=True,
              help="Seconds before a prediction is answered 504.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests in flight before new ones get 503.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Records per micro-batch; 1 turns micro-batching off.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Chat completions: the most tokens a reply may ask for (also the default).")
@click.option("--device", default="auto", show_default=True,
              help="Chat models: cpu, cuda, cuda:1 ... (auto: CUDA when available).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="How long a micro-batch waits for more requests.")
@click.option("--audit-log", type=click.Path(dir_okay=False), default=None,
              help="Append every request to this hash-chained log.")
@click.option("--audit-key", default="env:PRIVET_AUDIT_KEY", show_default=True, metavar="REF",
              help="HMAC key reference of the audit log (env:NAME, file:PATH, command:...).")
@click.option("--audit-signing-key", type=click.Path(dir_okay=False), default=None,
              help="Ed25519 private key (PEM) that signs the audit log's checkpoints.")
@click.option("--audit-fsync", type=click.Choice(["always", "interval", "never"]), default="always",
              show_default=True, help="always: on disk before the answer; interval: every 100 "
                                      "lines or 1 s; never: the OS decides.")
@click.option("--audit-inputs", is_flag=True,
              help="Also log the records, encrypted with --audit-inputs-key (default: --key).")
@click.option("--audit-inputs-key", default=None, metavar="REF",
              help="Key reference that seals logged records (default: the --key of the bundles).")
@click.option("--key", default=None, metavar="REF", help="Key reference of encrypted bundles.")
@click.option("--verify-key", type=click.Path(dir_okay=False), default=None, metavar="PUB",
              help="Refuse any bundle whose Ed25519 signature does not verify with this key.")
@click.option("--artifact", default=None, metavar="NAME", help="Which artifact to serve (default: ONNX).")
@click.option("--trust-code", is_flag=True, help="Allow artifacts that are programs (TorchScript, torch.export).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.pass_context
def serve(ctx: click.Context, bundles: tuple[str, ...], **options: Any) -> None:
    """Serve exported BUNDLEs (RUN/export, or NAME=RUN/export; local or s3://) over HTTP(S).

    POST /v1/models/NAME:predict takes {"records": [...]} as 'privet predict' reads them;
    GET /v1/models, /healthz, /readyz, /metrics and /openapi.json complete the API.
    A language model's run or export (what 'privet generate' takes) is served at
    POST /v1/chat/completions in the OpenAI format instead.
    """
    from ..serve import require_extra

    require_extra()  # one line naming the extra, before anything else is imported
    from ..serve.server import serve_forever

    _check_security(options)
    with contextlib.ExitStack() as stack:  # private copies of s3:// models, removed at exit
        config = _server_config(ctx, _staged_specs(stack, bundles), options)
        click.echo(f"privet: serving on {'https' if options['tls_cert'] else 'http'}://"
                   f"{options['host']}:{options['port']}", err=True)
        serve_forever(config)


def _staged_specs(stack: contextlib.ExitStack, specs: tuple[str, ...]) -> list[str]:
    """``[NAME=]PATH`` specs with every s3:// PATH replaced by a private local copy.

    A served model keeps the name its URL would give it locally (the run's folder name).
    """
    from ..objectstore import is_remote
    from ..serve.models import parse_spec
    from ..staging import private_folder, stage

    out = []
    for spec in specs:
        name, path = parse_spec(spec)
        if not is_remote(path):
            out.append(spec)
            continue
        staged = stage(path, private_folder(stack, "serve"))
        if name is None and staged.kind == "artifact":  # its run folder is not copied
            name = staged.run_name
        out.append(f"{name}={staged.path}" if name else str(staged.path))
    return out


def _check_security(o: dict[str, Any]) -> None:
    """Refuse the combinations that would expose models without protection."""
    from ..serve.server import is_loopback

    has_key = any(o[k] for k in ("jwt_secret_file", "jwt_public_key", "jwks_file"))
    if o["insecure_no_auth"]:
        if not is_loopback(o["host"]):
            raise UsageError(f"--insecure-no-auth is allowed only on a loopback --host "
                             f"(127.0.0.1, ::1), not {o['host']}")
        if has_key or o["roles_file"]:
            raise UsageError("--insecure-no-auth contradicts the JWT/roles options given")
    elif not o["roles_file"]:
        raise UsageError("privet serve needs JWT auth and --roles-file (or --insecure-no-auth "
                         "on a loopback --host)")
    if bool(o["tls_cert"]) != bool(o["tls_key"]):
        raise UsageError("--tls-cert and --tls-key go together")
    if o["tls_client_ca"] and not o["tls_cert"]:
        raise UsageError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    if not o["tls_cert"] and not is_loopback(o["host"]) and not o["insecure_plain_http"]:
        raise UsageError(f"--host {o['host']} without --tls-cert/--tls-key would send tokens and "
                         f"records in clear; add TLS, or --insecure-plain-http behind a TLS proxy")
    if (o["audit_inputs"] or o["audit_signing_key"]) and not o["audit_log"]:
        raise UsageError("--audit-inputs and --audit-signing-key need --audit-log FILE")
    if o["audit_inputs"] and not (o["audit_inputs_key"] or o["key"]):
        raise UsageError("--audit-inputs writes the records encrypted, never in clear: give "
                         "--audit-inputs-key REF (or --key REF)")


def _server_config(ctx: click.Context, bundles: list[str], o: dict[str, Any]) -> Any:
    """Load models, auth, audit and TLS; the uvicorn config that serves them."""
    from ..serve.app import Gateway, ServeSettings, create_app
    from ..serve.auth import Policy, verifier_from_options
    from ..serve.server import uvicorn_config
    from ..serve.tls import server_context

    verifier = verifier_from_options(secret_file=o["jwt_secret_file"], public_key=o["jwt_public_key"],
                                     jwks_file=o["jwks_file"], audience=o["jwt_audience"],
                                     issuer=o["jwt_issuer"], leeway=o["jwt_leeway"])
    if verifier is None and not o["insecure_no_auth"]:
        raise UsageError("no JWT key: set PRIVET_JWT_SECRET, or give --jwt-secret-file, "
                         "--jwt-public-key or --jwks-file")
    if verifier is not None and o["insecure_no_auth"]:
        raise UsageError("--insecure-no-auth contradicts PRIVET_JWT_SECRET, which is set")
    policy = Policy.load(o["roles_file"]) if verifier is not None else Policy.allow_all()
    ssl_context = server_context(o["tls_cert"], o["tls_key"], o["tls_client_ca"]) if o["tls_cert"] else None
    host = get_host(ctx)
    models, chat_models = _load_all(bundles, host, o)
    settings = ServeSettings(
        max_body_bytes=o["max_body_bytes"], max_records=o["max_records"],
        request_timeout_s=o["request_timeout"], max_concurrent=o["max_concurrent"],
        rate_limit=None if o["rate_limit"].lower() == "none" else o["rate_limit"],
        max_batch=o["max_batch"], max_wait_ms=o["max_wait_ms"], audit_inputs=o["audit_inputs"],
        audit_blocking=o["audit_fsync"] == "always", max_tokens=o["max_tokens"])
    gateway = Gateway(models, settings, verifier=verifier, policy=policy, audit=_audit(host, o),
                      chat_models=chat_models)
    return uvicorn_config(create_app(gateway), o["host"], o["port"], ssl_context=ssl_context,
                          log_level=o["log_level"])


def _load_all(specs: list[str], host: Any, o: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bundles for predictions, and language models (runs, LLM exports) for chat."""
    from ..serve.chat import is_chat_target, load_chat_models
    from ..serve.models import load_models

    chat = [s for s in specs if is_chat_target(s, host, o["artifact"])]
    if chat and o["key"]:
        raise UsageError("--key applies to ONNX bundles; chat models "
                         f"({', '.join(chat)}) are loaded as 'privet generate' loads them")
    models = load_models([s for s in specs if s not in chat], host, key=o["key"],
                         verify_key=o["verify_key"], artifact=o["artifact"], trust_code=o["trust_code"])
    chat_models = load_chat_models(chat, host, artifact=o["artifact"], trust_code=o["trust_code"],
                                   device=o["device"], verify_key=o["verify_key"])
    clash = sorted(set(models) & set(chat_models))
    if clash:
        raise UsageError(f"two models are named {clash[0]!r}; serve one as OTHER=PATH")
    return models, chat_models


def _audit(host: Any, o: dict[str, Any]) -> Any:
    """The audit log the options ask for, or None."""
    if not o["audit_log"]:
        return None
    from ..crypto import load_key
    from ..serve.server import open_audit
    from ..signing import load_signing_key

    hmac_key = load_key(o["audit_key"], host.catalog, Path.cwd(), where="--audit-key")
    signing = load_signing_key(Path(o["audit_signing_key"])) if o["audit_signing_key"] else None
    inputs_key = None
    if o["audit_inputs"]:  # never in clear: the usage check asked for a key
        ref, flag = (o["audit_inputs_key"], "--audit-inputs-key") if o["audit_inputs_key"] else (o["key"], "--key")
        inputs_key = load_key(ref, host.catalog, Path.cwd(), where=flag)
    return open_audit(o["audit_log"], hmac_key=hmac_key, signing_key=signing,
                      fsync=o["audit_fsync"], inputs_key=inputs_key)
