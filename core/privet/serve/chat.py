"""``POST /v1/chat/completions``: chat with a language model in the OpenAI wire format.

A served chat model is whatever ``privet generate`` accepts (a run folder, its export, or
an artifact folder in one), loaded by the same code (``load_for_generation``), and answered
with :meth:`privet.Model.generate`: the prompt is rendered by the model's own chat code.
Generation runs in a worker thread, one reply at a time per model (an ``asyncio.Lock``:
a second request waits without holding a thread), so the event loop never blocks.
Token counts come from a forward pre-hook on the module: the first call's input length is
the prompt, each call samples one token (the end-of-text token included).

With ``stream: true`` the reply is sent as Server-Sent Events; the audit entry (the input's
sha256 and the whole reply text) is appended after the last token and before
``data: [DONE]``, so a client that saw ``[DONE]`` saw an audited reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

import attrs
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError)
from starlette.requests import ClientDisconnect

from ..errors import PrivetError, UsageError
from ..storage import Storage
from .auth import AuthError, Principal
from .limits import BodyTooLarge, read_body
from .models import NAME, parse_spec

log = logging.getLogger("privet.serve")
CHAT_ROUTE = "/v1/chat/completions"


class Message(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The OpenAI request fields Privet honours; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat = Field(default=1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(default=1.0, gt=0.0, le=1.0)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: StrictInt = Field(default=1, ge=1, le=1)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class TokenCounter:
    """Tokens a module read and sampled in one generation, from a forward pre-hook."""

    def __init__(self, module: Any) -> None:
        self.prompt = self.calls = 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def reset(self) -> None:
        self.prompt = self.calls = 0

    def _hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if self.calls == 0 and hasattr(ids, "shape"):
            self.prompt = int(ids.shape[-1])
        self.calls += 1


@attrs.define
class ChatModel:
    """A language model served for chat: its component, its module, one reply at a time."""

    name: str
    folder: Path
    model: Any
    module: Any
    source_sha256: str
    counter: TokenCounter
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model (``object``/``owned_by`` as OpenAI's)."""
        return {"name": self.name, "id": self.name, "object": "model", "owned_by": "privet",
                "model": self.model.name, "task": "chat", "endpoint": CHAT_ROUTE,
                "bundle_sha256": self.source_sha256}


class StopScanner:
    """Cuts the reply at the first stop sequence, holding back text that may start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held = stops, ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop sequence ended the reply)."""
        text = self.held + piece
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class Generation:
    """One reply generated in a worker thread; pieces reach the event loop through a queue."""

    def __init__(self, served: ChatModel, request: ChatRequest, max_tokens: int) -> None:
        self.served, self.request, self.max_tokens = served, request, max_tokens
        self.id, self.created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        self.cancelled = threading.Event()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.finish_reason = "stop"
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    async def start(self) -> None:
        """Wait for the model (the lock), then generate in a thread; the lock is released
        when the thread ends, even if the client left or timed out long before."""
        await self.served.lock.acquire()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(None, self._run, loop)
        except BaseException:
            self.served.lock.release()
            raise
        future.add_done_callback(lambda _: self.served.lock.release())

    async def pieces(self, deadline: float) -> AsyncIterator[str]:
        """The reply's text pieces; TimeoutError past ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                kind, value = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.cancelled.set()  # a timeout, a disconnect or the end: the thread stops

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        put = lambda kind, value: loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))  # noqa: E731
        try:
            self._generate(lambda text: put("piece", text))
        except Exception as err:  # handed to the request; the thread must not die silently
            put("error", err)
        put("end", None)

    def _generate(self, emit: Callable[[str], None]) -> None:
        served, req = self.served, self.request
        served.counter.reset()
        stream = served.model.generate(
            served.module, [m.model_dump() for m in req.messages], max_new_tokens=self.max_tokens,
            temperature=req.temperature, top_p=None if req.top_p >= 1.0 else req.top_p, seed=req.seed)
        scanner, stopped = StopScanner(req.stops()), False
        try:
            for piece in stream:
                text, stopped = scanner.feed(piece)
                if text:
                    emit(text)
                if stopped or self.cancelled.is_set():
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stops sampling: a generator's close ends its loop
        if not stopped:
            tail = scanner.flush()
            if tail:
                emit(tail)
        counted = served.counter
        if not stopped and counted.calls >= self.max_tokens:
            self.finish_reason = "length"
        self.usage = {"prompt_tokens": counted.prompt, "completion_tokens": counted.calls,
                      "total_tokens": counted.prompt + counted.calls}


# -- loading ---------------------------------------------------------------------------------


def is_chat_target(spec: str, host: Any, artifact: str | None = None) -> bool:
    """Whether ``privet serve`` serves ``spec`` for chat: a run folder, an artifact folder in
    a bundle, or a bundle of a text-generating model with no ONNX artifact to predict with."""
    from ..components import Model

    path = Path(parse_spec(spec)[1])
    if (path / "config.yaml").exists() or (path.parent / "bundle.json").exists():
        return True
    if not (path / "bundle.json").exists():
        return False  # load_models says what is wrong with it
    try:
        meta = Storage(path, cipher=None).read_json("bundle.json")
        cls = host.catalog.get("model", str(meta["model"]["name"])).cls
    except (PrivetError, KeyError, TypeError, ValueError):
        return False
    if cls.generate is Model.generate:
        return False
    return artifact != "onnx" if artifact else "onnx" not in (meta.get("artifacts") or {})


def verify_chat_export(path: str, verify_key: str | Path, artifact: str | None) -> None:
    """Check a signed export's Ed25519 signature before it is loaded (``--verify-key``).

    A run folder carries no signature: with a verify key it is refused, never served
    unverified.
    """
    from ..commands.generate import _bundle_target
    from ..signing import verify_bundle

    folder, _ = _bundle_target(Path(path), artifact)
    if folder is None:
        raise UsageError(f"{path}: --verify-key checks signed export bundles; a run folder has no "
                         f"signature (serve its signed export: privet export RUN --sign KEY)")
    verify_bundle(folder, verify_key)


def load_chat_models(specs: list[str], host: Any, *, artifact: str | None = None,
                     trust_code: bool = False, device: str = "auto",
                     verify_key: str | Path | None = None) -> dict[str, ChatModel]:
    """Load every ``[NAME=]RUN_OR_EXPORT`` as ``privet generate`` does, on ``device``;
    with ``verify_key`` each export's signature is checked first."""
    from ..commands.generate import _place, load_for_generation
    from ..components import Model

    served: dict[str, ChatModel] = {}
    for spec in specs:
        name, path = parse_spec(spec)
        if verify_key is not None:
            verify_chat_export(path, verify_key, artifact)
        model, module = load_for_generation(path, host, artifact=artifact, trust_code=trust_code)
        if type(model).generate is Model.generate:
            raise UsageError(f"{path}: model {model.name!r} does not generate text; serve its "
                             f"ONNX export (privet export RUN --format onnx) for predictions")
        name = name or _default_name(Path(path))
        if not NAME.fullmatch(name):
            raise UsageError(f"{path}: model name {name!r} is not usable; serve it as NAME={path}")
        if name in served:
            raise UsageError(f"two models are named {name!r}; serve one as OTHER={path}")
        module = _place(module, device)
        served[name] = ChatModel(name, Path(path), model, module, _digest(Path(path)),
                                 TokenCounter(module))
    return served


def _default_name(path: Path) -> str:
    """The run's folder name (``runs/NAME``, ``runs/NAME/export``, ``runs/NAME/export/merged``)."""
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "config.yaml").exists():
            return folder.name
    return path.parent.name if (path / "bundle.json").exists() else path.name


def _digest(path: Path) -> str:
    """sha256 of the bundle.json (or the run's manifest) that identifies what is served."""
    for folder, name in ((path, "bundle.json"), (path.parent, "bundle.json"), (path, "manifest.json")):
        if (folder / name).exists():
            return hashlib.sha256(Storage(folder, cipher=None).read_bytes(name)).hexdigest()
    return ""


# -- the route ---------------------------------------------------------------------------------


def add_chat_route(app: FastAPI, require: Callable[[str], Any], api_error: type[Exception],
                   responses: dict[int | str, Any]) -> None:
    """``POST /v1/chat/completions`` with the ``predict`` permission on the named model."""

    @app.post(CHAT_ROUTE, tags=["chat"], summary="Chat with a language model (OpenAI format).",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": request_schema()}}}},
              responses=responses)
    async def chat_completions(request: Request, principal: Principal = Depends(require("predict"))
                               ) -> Response:
        return await _chat(request, principal, api_error)


def request_schema() -> dict[str, Any]:
    """The request's JSON schema with its nested models inlined (the OpenAPI document has
    no ``$defs`` to point into)."""
    schema = ChatRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


async def _chat(request: Request, principal: Principal, api_error: Any) -> Response:
    gateway, state = request.app.state.gateway, request.state
    settings = gateway.settings
    try:
        body = await read_body(request.stream(), settings.max_body_bytes)
    except BodyTooLarge:
        raise api_error(413, "body_too_large") from None
    except ClientDisconnect:
        raise api_error(400, "client_disconnected") from None
    state.input_sha256 = hashlib.sha256(body).hexdigest()
    req = _parse(body, api_error)
    role = gateway.policy.role_for(principal, "predict", req.model)
    if role is None:
        raise AuthError(403, "forbidden")
    state.role = role
    served = gateway.chat_models.get(req.model)
    if served is None:
        raise api_error(404, "unknown_model")
    state.model, state.bundle_sha256 = served.name, served.source_sha256
    max_tokens = req.max_tokens or req.max_completion_tokens or settings.max_tokens
    if max_tokens > settings.max_tokens:
        raise api_error(422, "max_tokens_too_large", detail=f"at most {settings.max_tokens}")
    if settings.audit_inputs:
        state.inputs = [m.model_dump() for m in req.messages]
    generation = Generation(served, req, max_tokens)
    deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
    if req.stream:
        return _stream(request, generation, deadline)
    return await _complete(request, generation, deadline, api_error)


def _parse(body: bytes, api_error: Any) -> ChatRequest:
    """The request, or 400 (not JSON) / 422 (naming the first wrong field)."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise api_error(400, "malformed_json", detail="the body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise api_error(422, "invalid_body", detail="the body is a JSON object")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise api_error(422, "invalid_request", detail=f"{where}: {first.get('msg', 'invalid')}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _complete(request: Request, generation: Generation, deadline: float, api_error: Any) -> Response:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(generation.start(), max(0.0, deadline - loop.time()))
        text = "".join([piece async for piece in generation.pieces(deadline)])
    except TimeoutError:
        generation.cancelled.set()
        raise api_error(504, "timeout") from None
    except PrivetError as err:  # e.g. a model without a chat template: the caller's to fix
        raise api_error(422, "invalid_messages", detail=str(err).splitlines()[0][:300]) from None
    except Exception:
        log.exception("chat generation failed")
        raise api_error(500, "generation_failed") from None
    request.state.output = text
    body = {**_head(generation, "chat.completion"), "choices": [{
        "index": 0, "message": {"role": "assistant", "content": text},
        "finish_reason": generation.finish_reason}], "usage": generation.usage}
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")


def _head(generation: Generation, kind: str) -> dict[str, Any]:
    return {"id": generation.id, "object": kind, "created": generation.created,
            "model": generation.served.name}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def _stream(request: Request, generation: Generation, deadline: float) -> StreamingResponse:
    """Server-Sent Events; the middleware sends them as they come and audits at the end."""
    request.state.streaming = True
    return StreamingResponse(_events(request, generation, deadline), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(request: Request, generation: Generation, deadline: float) -> AsyncIterator[bytes]:
    state, head = request.state, _head(generation, "chat.completion.chunk")
    chunk = lambda delta, finish=None: _event({**head, "choices": [  # noqa: E731
        {"index": 0, "delta": delta, "finish_reason": finish}]})
    out: list[str] = []
    yield chunk({"role": "assistant", "content": ""})
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(generation.start(), max(0.0, deadline - loop.time()))
        async for piece in generation.pieces(deadline):
            out.append(piece)
            yield chunk({"content": piece})
    except Exception as err:  # the status (200) is sent: the error goes in the stream
        state.output, state.reason = "".join(out), _stream_reason(err)
        await state.finish_audit()
        yield _event({"error": {"message": state.reason, "type": state.reason}})
        return
    finally:  # also when the client left: the middleware audits what was generated
        state.output = "".join(out)
    yield chunk({}, generation.finish_reason)
    if generation.request.stream_options and generation.request.stream_options.include_usage:
        yield _event({**head, "choices": [], "usage": generation.usage})
    if not await state.finish_audit():
        yield _event({"error": {"message": "audit_unavailable", "type": "audit_unavailable"}})
        return
    yield b"data: [DONE]\n\n"


def _stream_reason(err: Exception) -> str:
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, PrivetError):
        return "invalid_messages"
    log.error("chat generation failed: %s", (str(err).splitlines() or [type(err).__name__])[0][:200])
    return "generation_failed"
