"""The outermost layer of every request: id, body-size and concurrency limits, and the
audit entry and metrics written before the answer leaves.

The response's start is held back until its body is complete, then the audit entry is
appended, then both are sent: no client sees an answer that the audit log does not hold.
If the audit log cannot be written, the answer becomes a 503 (fail closed). A streamed
chat reply (``request.state.streaming``) is sent as it is generated: its route appends the
entry through ``request.state.finish_audit()`` before the stream's last event, and an
aborted stream (client gone) is audited when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
import time
from typing import Any

log = logging.getLogger("privet.serve")
PROBES = ("/healthz", "/readyz")
#: Request ids: a random prefix per server process, then a counter (unique without a
#: system call per request, and in arrival order within one log)
_REQUEST_IDS = (f"{prefix}-{n:08d}" for prefix in [secrets.token_hex(6)] for n in itertools.count(1))
_PREDICT_PATH = re.compile(r"/v1/models/[^/]+:predict")
_ROUTES = ("/healthz", "/readyz", "/metrics", "/v1/models", "/openapi.json", "/v1/chat/completions")


def route_of(path: str) -> str:
    """The route template a path belongs to (a bounded metrics label), else ``other``."""
    if path in _ROUTES:
        return path
    return "/v1/models/{name}:predict" if _PREDICT_PATH.fullmatch(path) else "other"


class GatewayMiddleware:
    """Wraps the FastAPI app; ``gateway`` holds the limits, metrics and audit log."""

    def __init__(self, app: Any, gateway: Any) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self.gateway, scope, send)
        scope.setdefault("state", {})["request_id"] = exchange.request_id
        scope["state"]["finish_audit"] = exchange.finish_stream
        refusal = None if scope["path"] in PROBES else self._refusal(scope)
        if refusal is not None:
            await exchange.reply(*refusal)
            return
        entered = scope["path"] in PROBES or self.gateway.gate.try_enter()
        if not entered:
            await exchange.reply(503, "overloaded", {"retry-after": "1"})
            return
        try:
            await self.app(scope, receive, exchange.send)
        except Exception:
            log.exception("request %s failed", exchange.request_id)
            if not exchange.started:
                await exchange.reply(500, "internal_error")
        finally:
            if exchange.started and not exchange.recorded:  # a stream cut short
                scope["state"].setdefault("reason", "stream_aborted")
                await exchange.finish_stream()
            if scope["path"] not in PROBES:
                self.gateway.gate.leave()

    def _refusal(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return 400, "bad_content_length"
                if size > self.gateway.settings.max_body_bytes:
                    return 413, "body_too_large"
        return None


class _Exchange:
    """One request's answer, held until it can be audited."""

    def __init__(self, gateway: Any, scope: dict[str, Any], send: Any) -> None:
        self.gateway, self.scope, self._send = gateway, scope, send
        self.request_id = next(_REQUEST_IDS)
        self.begun = time.perf_counter()
        self.start: dict[str, Any] | None = None
        self.started = False  # something reached the client
        self.recorded = False  # the audit entry (and metrics) written

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif message["type"] == "http.response.body" and not self.started:
            if self.scope["state"].get("streaming") and self.start is not None \
                    and self.start["status"] == 200:
                await self._open_stream(message)  # audited by finish_stream, at its end
            else:
                await self._release(message)  # a streamed answer is audited at its first chunk
        else:
            await self._send(message)

    async def _release(self, body: dict[str, Any]) -> None:
        assert self.start is not None
        if not await self._record(int(self.start["status"])):
            self.start, body = _reply_messages(503, "audit_unavailable", None)
        if not any(h[0].lower() == b"x-request-id" for h in self.start.get("headers", ())):
            self.start["headers"] = [*self.start.get("headers", ()), (b"x-request-id", self.request_id.encode())]
        self.started = True
        await self._send(self.start)
        await self._send(body)

    async def _open_stream(self, body: dict[str, Any]) -> None:
        assert self.start is not None
        self.start["headers"] = [*self.start.get("headers", ()), (b"x-request-id", self.request_id.encode())]
        self.started = True
        await self._send(self.start)
        await self._send(body)

    async def finish_stream(self) -> bool:
        """Audit a streamed answer once, when its content is known; False if the log failed."""
        if self.recorded:
            return True
        return await self._record(int(self.start["status"]) if self.start else 200)

    async def reply(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        """Answer from here (the app never saw the request)."""
        self.scope["state"]["reason"] = reason
        self.start, body = _reply_messages(status, reason, headers)
        await self._release(body)

    async def _record(self, status: int) -> bool:
        """Metrics, then the audit entry; False when the audit log could not be written."""
        self.recorded = True
        self.gateway.answered()
        state = self.scope.get("state", {})
        seconds = time.perf_counter() - self.begun
        model = state.get("model") or ""
        self.gateway.metrics.observe(route_of(self.scope["path"]), model, status, seconds,
                                     state.get("reason"))
        if self.gateway.audit is None or self.scope["path"] in PROBES:
            return True
        entry = {"subject": state.get("subject"), "role": state.get("role"), "model": model or None,
                 "bundle_sha256": state.get("bundle_sha256"), "request_id": self.request_id,
                 "input_sha256": state.get("input_sha256"), "inputs": state.get("inputs"),
                 "output": state.get("output"), "latency_ms": round(seconds * 1000, 3),
                 "status": status, "reason": state.get("reason")}
        try:
            if self.gateway.audit_executor is not None:  # an fsync must not stall the event loop
                # a plain executor hop (~25 us) rather than anyio's (~90 us); its threads
                # append side by side, so one fsync covers every line written before it
                await asyncio.get_running_loop().run_in_executor(
                    self.gateway.audit_executor, self.gateway.audit.append, entry)
            else:  # a buffered append (~50 us) costs less than the hop to a thread
                self.gateway.audit.append(entry)
        except Exception:
            log.exception("audit log append failed; answering 503")
            self.gateway.metrics.rejections.labels("audit_unavailable").inc()
            return False
        return True


def _reply_messages(status: int, reason: str, headers: dict[str, str] | None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": reason}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body})
