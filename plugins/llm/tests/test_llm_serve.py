"""``privet serve`` on an LLM export: ``POST /v1/chat/completions`` in the OpenAI format.

A real uvicorn server on 127.0.0.1 serves a tiny Qwen2 LoRA run's merged export, loaded
as ``privet serve`` loads it; tests talk HTTP to it with httpx and JWTs signed here.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")  # the privet[serve] extra

import httpx  # noqa: E402

from .test_llm_export import train_run  # noqa: E402

SECRET = "c" * 24 + "-chat-test-secret-0123456789"
AUDIENCE = "privet-chat-test"
AUDIT_KEY = bytes(range(32))
MESSAGES = [{"role": "user", "content": "reverse cat"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return train_run(tmp_path_factory.mktemp("llm-serve"), "qwen2", epochs=1, export=["merged"])


def token(roles: tuple[str, ...] = ("chatter",), sub: str = "alice") -> dict[str, str]:
    import jwt

    now = int(time.time())
    tok = jwt.encode({"sub": sub, "roles": list(roles), "aud": AUDIENCE, "iat": now, "exp": now + 300},
                     SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture(scope="module")
def server(run: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The gateway serving the run's export as ``privet serve`` would (3-token cap)."""
    from privet.audit import AuditLog
    from privet.serve.app import Gateway, ServeSettings, create_app
    from privet.serve.auth import Grant, Policy, TokenVerifier
    from privet.serve.chat import is_chat_target, load_chat_models
    from privet.serve.server import BackgroundServer, free_port, uvicorn_config

    host, run_dir = run
    export = str(run_dir / "export")
    assert is_chat_target(export, host)
    chat_models = load_chat_models([f"bot={export}"], host, device="cpu")
    policy = Policy({"chatter": Grant(frozenset({"bot"}), frozenset({"predict", "list"})),
                     "viewer": Grant(frozenset({"*"}), frozenset({"list"})),
                     "other": Grant(frozenset({"tiny"}), frozenset({"predict"}))})
    verifier = TokenVerifier(key=SECRET.encode(), algorithms=("HS256",), audience=AUDIENCE, leeway=0)
    audit_path = tmp_path_factory.mktemp("chat-audit") / "audit.jsonl"
    audit = AuditLog(audit_path, hmac_key=AUDIT_KEY, fsync="never")
    gateway = Gateway({}, ServeSettings(max_tokens=8, rate_limit=None), verifier=verifier,
                      policy=policy, audit=audit, chat_models=chat_models)
    port = free_port()
    background = BackgroundServer(uvicorn_config(create_app(gateway), "127.0.0.1", port,
                                                 log_level="warning")).start()
    yield {"url": f"http://127.0.0.1:{port}", "audit": audit, "audit_path": audit_path,
           "model": chat_models["bot"], "host": host, "run_dir": run_dir}
    background.stop()


def chat(server: dict[str, Any], **body: Any) -> httpx.Response:
    payload = {"model": "bot", "messages": MESSAGES, "temperature": 0, "max_tokens": 6, **body}
    return httpx.post(f"{server['url']}/v1/chat/completions", json=payload, headers=token(), timeout=60)


def events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]


def test_a_completion_has_the_openai_shape_and_counts_its_tokens(server):
    from privet_llm.generation import encode_prompt

    answer = chat(server)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == "bot"
    assert body["id"].startswith("chatcmpl-") and abs(body["created"] - time.time()) < 120
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    tokenizer = server["model"].module.privet_tokenizer
    assert usage["prompt_tokens"] == len(encode_prompt(tokenizer, MESSAGES))
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == 6 else "stop")
    # the same text privet generate prints for the same chat at temperature 0
    model, module = server["model"].model, server["model"].module
    expected = "".join(model.generate(module, MESSAGES, max_new_tokens=6, temperature=0))
    assert choice["message"]["content"] == expected


def test_streamed_chunks_reassemble_to_the_non_streamed_reply(server):
    whole = chat(server).json()
    streamed = chat(server, stream=True, stream_options={"include_usage": True})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    data = events(streamed)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text and text == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_a_stop_sequence_cuts_the_reply_before_it(server):
    whole = chat(server, max_tokens=8).json()["choices"][0]["message"]["content"]
    assert len(whole) >= 2, f"greedy reply {whole!r} is too short to cut: make the fixture reply longer"
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = chat(server, max_tokens=8, stop=[stop]).json()["choices"][0]
    assert cut["message"]["content"] == whole[:whole.index(stop)]
    assert cut["finish_reason"] == "stop"
    streamed = chat(server, max_tokens=8, stop=stop, stream=True)
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in events(streamed)[:-1])
    assert text == whole[:whole.index(stop)]


def test_the_model_is_listed_and_needs_a_token_and_the_predict_role(server):
    url = server["url"]
    listed = httpx.get(f"{url}/v1/models", headers=token()).json()["models"]
    assert [(m["name"], m["task"], m["endpoint"]) for m in listed] == [("bot", "chat", "/v1/chat/completions")]
    body = {"model": "bot", "messages": MESSAGES, "max_tokens": 2}
    route = f"{url}/v1/chat/completions"
    assert httpx.post(route, json=body).status_code == 401
    bad = token()["Authorization"][:-3] + "AAA"  # a tampered signature
    assert httpx.post(route, json=body, headers={"Authorization": bad}).status_code == 401
    assert httpx.post(route, json=body, headers=token(("viewer",))).status_code == 403
    refused = httpx.post(route, json=body, headers=token(("other",)))  # predict, on another model
    assert refused.status_code == 403 and refused.json() == {"error": "forbidden"}
    assert httpx.post(route, json={**body, "model": "ghost"}, headers=token(("other",))).status_code == 403


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b"[]", 422),
    (json.dumps({"model": "bot"}).encode(), 422),
    (json.dumps({"model": "bot", "messages": []}).encode(), 422),
    (json.dumps({"model": "bot", "messages": "hi"}).encode(), 422),
    (json.dumps({"model": "bot", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 422),
    (json.dumps({"model": "bot", "messages": [{"role": "user", "content": 3}]}).encode(), 422),
    (json.dumps({"model": "bot", "messages": MESSAGES, "max_tokens": 9}).encode(), 422),
    (json.dumps({"model": "bot", "messages": MESSAGES, "temperature": "hot"}).encode(), 422),
    (json.dumps({"model": "bot", "messages": MESSAGES, "n": 2}).encode(), 422),
    (b'{"model": "bot", "messages": [], "temperature": NaN}', 400),
    # a model the caller holds no role on is refused before it is looked up: no name probing
    (json.dumps({"model": "nobody", "messages": MESSAGES}).encode(), 403),
])
def test_malformed_requests_get_a_4xx_naming_the_problem(server, body, status):
    answer = httpx.post(f"{server['url']}/v1/chat/completions", content=body,
                        headers={**token(), "content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["error"], str)


def test_each_completion_is_audited_with_its_input_digest_and_reply(server):
    from privet.audit import verify_log

    payload = {"model": "bot", "messages": MESSAGES, "temperature": 0, "max_tokens": 4}
    sent = []
    for stream in (False, True):
        raw = json.dumps({**payload, "stream": stream}).encode()
        answer = httpx.post(f"{server['url']}/v1/chat/completions", content=raw,
                            headers={**token(), "content-type": "application/json"}, timeout=60)
        assert answer.status_code == 200
        sent.append((raw, answer))
    entries = {e["request_id"]: e for e in map(json.loads, server["audit_path"].read_text().splitlines())
               if e.get("kind") == "request"}
    texts = []
    for raw, answer in sent:
        entry = entries[answer.headers["x-request-id"]]
        assert entry["input_sha256"] == hashlib.sha256(raw).hexdigest()
        assert (entry["subject"], entry["role"], entry["model"], entry["status"]) == ("alice", "chatter", "bot", 200)
        assert entry["bundle_sha256"] == server["model"].source_sha256 and entry["bundle_sha256"]
        texts.append(entry["output"])
    assert texts[0] == sent[0][1].json()["choices"][0]["message"]["content"] == texts[1]
    assert verify_log(server["audit_path"], hmac_key=AUDIT_KEY).entries >= 2


class Slow:
    """A model whose every text piece takes 0.3 s: generation outlasts a 0.2 s timeout."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        for piece in self.inner.generate(*args, **kwargs):
            time.sleep(0.3)
            yield piece


def test_a_reply_past_the_timeout_is_504_or_an_error_event_and_is_audited(server, tmp_path):
    from privet.audit import AuditLog
    from privet.serve.app import Gateway, ServeSettings, create_app
    from privet.serve.auth import Policy
    from privet.serve.chat import load_chat_models
    from privet.serve.server import BackgroundServer, free_port, uvicorn_config

    chat_models = load_chat_models([f"bot={server['run_dir'] / 'export'}"], server["host"], device="cpu")
    chat_models["bot"].model = Slow(chat_models["bot"].model)
    audit = AuditLog(tmp_path / "audit.jsonl", hmac_key=AUDIT_KEY, fsync="never")
    gateway = Gateway({}, ServeSettings(request_timeout_s=0.2, max_tokens=8), verifier=None,
                      policy=Policy.allow_all(), audit=audit, chat_models=chat_models)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with BackgroundServer(uvicorn_config(create_app(gateway), "127.0.0.1", port, log_level="warning")):
        body = {"model": "bot", "messages": MESSAGES, "temperature": 0, "max_tokens": 4}
        late = httpx.post(url, json=body, timeout=30)
        assert late.status_code == 504 and late.json() == {"error": "timeout"}
        streamed = httpx.post(url, json={**body, "stream": True}, timeout=30)
        data = events(streamed)
        assert streamed.status_code == 200 and "[DONE]" not in data
        assert json.loads(data[-1]) == {"error": {"message": "timeout", "type": "timeout"}}
    audit.close()
    entries = [e for e in map(json.loads, (tmp_path / "audit.jsonl").read_text().splitlines())
               if e.get("kind") == "request"]
    assert [(e["status"], e["reason"]) for e in entries] == [(504, "timeout"), (200, "timeout")]


def test_a_stream_the_client_abandons_is_audited_as_aborted(server, tmp_path):
    from privet.audit import AuditLog
    from privet.serve.app import Gateway, ServeSettings, create_app
    from privet.serve.auth import Policy
    from privet.serve.chat import load_chat_models
    from privet.serve.server import BackgroundServer, free_port, uvicorn_config

    chat_models = load_chat_models([f"bot={server['run_dir'] / 'export'}"], server["host"], device="cpu")
    chat_models["bot"].model = Slow(chat_models["bot"].model)
    path = tmp_path / "audit.jsonl"
    gateway = Gateway({}, ServeSettings(max_tokens=8), verifier=None, policy=Policy.allow_all(),
                      audit=AuditLog(path, hmac_key=AUDIT_KEY, fsync="never"), chat_models=chat_models)
    port = free_port()
    body = {"model": "bot", "messages": MESSAGES, "temperature": 0, "max_tokens": 8, "stream": True}
    with BackgroundServer(uvicorn_config(create_app(gateway), "127.0.0.1", port, log_level="warning")):
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as answer:
            first = next(answer.iter_lines())  # the role chunk; then the client hangs up
        assert json.loads(first[len("data: "):])["choices"][0]["delta"]["role"] == "assistant"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and '"stream_aborted"' not in path.read_text():
            time.sleep(0.1)
    entries = [e for e in map(json.loads, path.read_text().splitlines()) if e.get("kind") == "request"]
    assert [(e["status"], e["reason"]) for e in entries] == [(200, "stream_aborted")]


def test_fuzzed_chat_requests_from_the_served_schema_never_get_a_server_error(server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    url = server["url"]
    served = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/chat/completions"]["post"]
    assert "$ref" not in json.dumps(served["requestBody"])  # nested models inlined, none dangling
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == "/v1/chat/completions"]

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case) -> None:
        response = case.call(base_url=url, headers=token(), timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    check()


def test_runs_exports_and_artifact_folders_are_chat_targets_and_onnx_bundles_are_not(server, tmp_path):
    from privet.serve.chat import is_chat_target

    run_dir, host = server["run_dir"], server["host"]
    assert is_chat_target(str(run_dir), host) and is_chat_target(f"x={run_dir / 'export' / 'merged'}", host)
    assert not is_chat_target(str(run_dir / "export"), host, artifact="onnx")
    assert not is_chat_target(str(tmp_path), host)  # not a run nor a bundle: load_models says why


def test_privet_serve_sends_llm_exports_to_chat_and_refuses_bundle_keys_for_them(server):
    from privet.commands.serve import _load_all
    from privet.errors import UsageError

    export = str(server["run_dir"] / "export")
    options = {"key": None, "verify_key": None, "artifact": None, "trust_code": False, "device": "cpu"}
    models, chat_models = _load_all([f"bot={export}"], server["host"], options)
    assert models == {} and list(chat_models) == ["bot"]
    with pytest.raises(UsageError, match="--key"):
        _load_all([export], server["host"], {**options, "key": "env:PRIVET_KEY"})


def test_signed_llm_exports_are_verified_before_they_are_served(server, tmp_path):
    import shutil

    from privet.commands.serve import _load_all
    from privet.errors import UsageError
    from privet.signing import SignatureError, new_signing_key, sign_bundle

    private, public = new_signing_key(tmp_path / "keys" / "serve")
    export = tmp_path / "export"
    shutil.copytree(server["run_dir"] / "export", export)
    options = {"key": None, "verify_key": str(public), "artifact": None, "trust_code": False,
               "device": "cpu"}
    with pytest.raises(SignatureError, match="not signed"):
        _load_all([f"bot={export}"], server["host"], options)
    sign_bundle(export, private)
    _, chat_models = _load_all([f"bot={export}"], server["host"], options)
    assert list(chat_models) == ["bot"]
    weights = next((export / "merged").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=weights.name):
        _load_all([f"bot={export}"], server["host"], options)
    with pytest.raises(UsageError, match="no signature"):
        _load_all([f"bot={server['run_dir']}"], server["host"], options)


def test_the_stop_scanner_holds_back_what_may_begin_a_stop_sequence():
    from privet.serve.chat import StopScanner

    scanner = StopScanner(["END"])
    assert scanner.feed("abcE") == ("abc", False)
    assert scanner.feed("Nx") == ("ENx", False)
    assert scanner.feed("yEN") == ("y", False)
    assert scanner.feed("Dz") == ("", True)
    tail = StopScanner(["END"])
    assert tail.feed("hiE") == ("hi", False) and tail.flush() == "E"
