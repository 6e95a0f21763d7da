"""The FastAPI application of ``privet serve``: routes, permissions, errors, the gateway.

Every route states its permission where it is declared (``Depends(require("predict"))``).
Everything a client can get wrong is answered with a 4xx JSON body ``{"error": REASON}``
(plus the record indices for records): never a 500, never a traceback or a key's name.
Outermost, :class:`GatewayMiddleware` gives each request an id, applies the body-size
and concurrency limits, and writes one audit entry and the metrics of every request,
accepted or refused, before its answer leaves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import hashlib
import json
from typing import Any, AsyncIterator, Callable

import attrs
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from .auth import AuthError, Policy, Principal, TokenVerifier, bearer_token
from .batching import MicroBatcher
from .limits import BodyTooLarge, ConcurrencyGate, RateLimitExceeded, SubjectRateLimiter, read_body
from .metrics import Metrics
from .middleware import GatewayMiddleware
from .models import RecordErrors, ServedModel

PREDICT_ROUTE = "/v1/models/{name}:predict"


@attrs.define(frozen=True)
class ServeSettings:
    """The limits and batching of one server (``privet serve`` options)."""

    max_body_bytes: int = 1 << 20
    max_records: int = 1024
    request_timeout_s: float = 30.0
    max_concurrent: int = 64
    rate_limit: str | None = "100/second"
    max_batch: int = 32
    max_wait_ms: float = 2.0
    audit_inputs: bool = False
    #: the largest ``max_tokens`` of a chat completion (also its default)
    max_tokens: int = 512
    #: whether an audit append may block (fsync=always): then it runs in a worker thread
    audit_blocking: bool = True
    #: threads appending blocking audit entries: while one waits for its fsync the others
    #: write their lines, and the next fsync covers them all (group commit)
    audit_threads: int = 8


class ApiError(Exception):
    """A request refused with ``status`` and a reason a client can act on."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers, self.extra = status, reason, headers or {}, extra


class Gateway:
    """What the routes share: models and their batchers, auth, limits, metrics, audit."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings, *,
                 verifier: TokenVerifier | None, policy: Policy, audit: Any = None,
                 chat_models: dict[str, Any] | None = None) -> None:
        self.models = models
        self.chat_models = chat_models or {}  # name -> serve.chat.ChatModel
        self.settings = settings
        self.verifier = verifier  # None: --insecure-no-auth (loopback only)
        self.policy = policy
        self.audit = audit
        self.metrics = Metrics()
        self.limiter = SubjectRateLimiter(settings.rate_limit) if settings.rate_limit else None
        self.gate = ConcurrencyGate(settings.max_concurrent)
        for model in models.values():  # unbatched: requests run side by side, one core each
            model.tune_for_serving(intra_op_threads=1 if settings.max_batch <= 1 else 0)
        self.audit_executor = (concurrent.futures.ThreadPoolExecutor(
            max(1, settings.audit_threads), thread_name_prefix="privet-audit")
            if audit is not None and settings.audit_blocking else None)
        self.batchers = {name: MicroBatcher(m, max_batch=settings.max_batch,
                                            max_wait_s=settings.max_wait_ms / 1000,
                                            on_batch=self.metrics.batch)
                         for name, m in models.items()}
        self.ready = False
        self.answers = 0

    def authenticate(self, request: Request) -> Principal:
        if self.verifier is None:
            host = request.client.host if request.client else "unknown"
            return Principal(f"anonymous@{host}", ("anonymous",))
        return self.verifier.principal(bearer_token(request.headers.get("authorization")))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        for batcher in self.batchers.values():
            await batcher.start()
        settle()
        self.ready = True
        try:
            yield
        finally:
            gc.unfreeze()
            self.ready = False
            for batcher in self.batchers.values():
                await batcher.stop()
            if self.audit_executor is not None:  # appends in flight finish first
                self.audit_executor.shutdown(wait=True)
            if self.audit is not None:
                self.audit.close()

    def answered(self) -> None:
        """Count an answered request; once the first ones have run, :func:`settle` again."""
        self.answers += 1
        if self.answers == WARM_REQUESTS:
            settle()


#: Requests after which the server counts as warm: lazy imports (torch, on a model's
#: first encode) and first-call caches are in place.
WARM_REQUESTS = 100


def settle() -> None:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``).

    What a server has loaded (torch, ONNX Runtime, the models, ~250 000 objects) lives as
    long as it does; left in the collector's oldest generation, each full collection
    walks all of it: about 0.15 ms of CPU per request, measured. Frozen objects are still
    freed when their last reference goes; only cycles among them stay (no ``gc.collect()``
    first: it would cost every server start ~0.1 s for a few cycles' worth of memory).
    """
    gc.freeze()


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def require(action: str) -> Callable[..., Any]:
    """A dependency: the caller is authenticated (401), within its rate (429) and holds a
    role allowing ``action`` on the route's model, if any (403)."""

    async def dependency(request: Request) -> Principal:
        gateway = gateway_of(request)
        principal = gateway.authenticate(request)
        request.state.subject = principal.subject
        if gateway.limiter is not None:
            try:
                gateway.limiter.hit(principal.subject)
            except RateLimitExceeded as err:
                raise ApiError(429, "rate_limited", {"Retry-After": str(err.retry_after)}) from None
        model = request.path_params.get("name")
        role = gateway.policy.role_for(principal, action, model)
        if role is None:
            raise AuthError(403, "forbidden")
        request.state.role = role
        return principal

    return dependency


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_records(body: bytes, max_records: int) -> list[dict[str, Any]]:
    """``{"records": [...]}`` -> the records; 400 for bad JSON, 422 naming what is wrong."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise ApiError(400, "malformed_json", detail=f"line {err.lineno} column {err.colno}: {err.msg}") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "malformed_json", detail="the body is not UTF-8 JSON") from None
    if not isinstance(data, dict) or set(data) != {"records"}:
        raise ApiError(422, "invalid_body", detail='the body is {"records": [RECORD, ...]}')
    records = data["records"]
    if not isinstance(records, list) or not records:
        raise ApiError(422, "invalid_body", detail="records must be a non-empty list")
    if len(records) > max_records:
        raise ApiError(422, "too_many_records", detail=f"at most {max_records} records per request")
    bad = [{"index": i, "error": "not_an_object"} for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise ApiError(422, "invalid_record", records=bad)
    return records


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a model's results, as JSON values."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, default=_plain, ensure_ascii=False), status_code=status,
                    headers=headers, media_type="application/json")


def add_routes(app: FastAPI) -> None:
    """The endpoints, each with the permission it needs."""

    @app.get("/healthz", tags=["probes"], summary="The process is up.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], summary="Models are loaded and batchers run.",
             responses={503: {"model": ErrorBody}})
    async def readyz(request: Request) -> Response:
        if gateway_of(request).ready:
            return json_response({"status": "ready"})
        raise ApiError(503, "not_ready")

    @app.get("/metrics", tags=["admin"], summary="Prometheus metrics.", responses=REFUSALS)
    async def metrics(request: Request, _: Principal = Depends(require("metrics"))) -> Response:
        data, content_type = gateway_of(request).metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models", tags=["models"], summary="The models this caller may list.",
             responses=REFUSALS)
    async def list_models(request: Request, principal: Principal = Depends(require("list"))) -> Response:
        gateway = gateway_of(request)
        everything = {**gateway.models, **gateway.chat_models}
        visible = [m.describe() for name, m in everything.items()
                   if gateway.policy.role_for(principal, "list", name)]
        return json_response({"models": visible})

    @app.post(PREDICT_ROUTE, tags=["models"], summary="Predict records with a model.",
              openapi_extra={"requestBody": PREDICT_BODY}, responses=PREDICT_REFUSALS)
    async def predict(name: str, request: Request, _: Principal = Depends(require("predict"))) -> Response:
        return await _predict(name, request)


async def _predict(name: str, request: Request) -> Response:
    gateway = gateway_of(request)
    model = gateway.models.get(name)
    if model is None:
        raise ApiError(404, "unknown_model")
    state, settings = request.state, gateway.settings
    state.model, state.bundle_sha256 = name, model.bundle_sha256
    try:
        body = await read_body(request.stream(), settings.max_body_bytes)
    except BodyTooLarge:
        raise ApiError(413, "body_too_large") from None
    except ClientDisconnect:  # audited as such; nobody reads the answer
        raise ApiError(400, "client_disconnected") from None
    state.input_sha256 = hashlib.sha256(body).hexdigest()
    records = parse_records(body, settings.max_records)
    if settings.audit_inputs:
        state.inputs = records
    try:
        outcome = await asyncio.wait_for(gateway.batchers[name].submit(records), settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout") from None
    if isinstance(outcome, RecordErrors):
        raise ApiError(422, "invalid_record", records=outcome.errors)
    text = json.dumps({"model": name, "predictions": outcome}, default=_plain, ensure_ascii=False)
    if gateway.audit is not None:
        state.output = outcome  # the audit log writes numpy values as plain JSON too
    return Response(text, media_type="application/json")


class ErrorBody(BaseModel):
    """Every refusal: a reason, sometimes a detail or the indices of the bad records."""

    error: str
    detail: str | None = None
    records: list[dict[str, Any]] | None = None


PREDICT_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["records"], "additionalProperties": False,
    "properties": {"records": {"type": "array", "minItems": 1,
                               "items": {"type": "object"}}}}}}}
REFUSALS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 429, 503)}
PREDICT_REFUSALS = {**REFUSALS, **{code: {"model": ErrorBody} for code in (400, 404, 413, 422, 504)}}


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"error": REASON}``, its reason noted for the audit and metrics."""

    def refuse(request: Request, status: int, reason: str, headers: dict[str, str] | None = None,
               **extra: Any) -> Response:
        request.state.reason = reason
        return json_response({"error": reason, **extra}, status, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> Response:
        return refuse(request, err.status, err.reason, err.headers, **err.extra)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, err: AuthError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        # no detail: which check failed (expiry, signature, audience) helps only an attacker
        return refuse(request, err.status, "unauthorized" if err.status == 401 else "forbidden", headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        return refuse(request, 422, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return refuse(request, err.status_code, reason, dict(err.headers or {}))


def create_app(gateway: Gateway) -> Any:
    """The ASGI application: FastAPI wrapped in the :class:`GatewayMiddleware`."""
    app = FastAPI(title="Privet serve", version=__version__, lifespan=gateway.lifespan,
                  docs_url=None, redoc_url=None,  # no pages pulling scripts from a CDN
                  description="Predictions from exported Privet bundles, behind JWT roles, "
                              "rate limits and an audit log.")
    app.state.gateway = gateway
    add_routes(app)
    if gateway.chat_models:  # imported only then: it is the LLM side of the gateway
        from .chat import add_chat_route

        add_chat_route(app, require, ApiError, {**PREDICT_REFUSALS, 500: {"model": ErrorBody}})
    add_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return GatewayMiddleware(app, gateway)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The schema, with bearer auth declared on every route but the probes (declared here
    rather than by a security dependency, which would cost each request a resolution)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A JWT; its `roles` claim names roles of the roles file."}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path not in ("/healthz", "/readyz"):
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
