"""The gateway's fast paths keep their guarantees: a remembered token still expires and
an altered one is still refused; the serving ONNX session gives the same answers and is
refused if the artifact changed; concurrent fsync=always appends share disk flushes
while every answer still waits for its own entry to be on disk."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import types

import httpx
import pytest

pytest.importorskip("fastapi")

from privet.audit import AuditLog, verify_log  # noqa: E402
from privet.errors import PrivetError  # noqa: E402
from privet.serve import auth as auth_module  # noqa: E402
from privet.serve.app import ServeSettings  # noqa: E402
from privet.serve.auth import AuthError, TokenVerifier  # noqa: E402
from privet.serve.models import load_models  # noqa: E402


def _verifier(jwt_kit) -> TokenVerifier:
    return TokenVerifier(key=jwt_kit.SECRET.encode(), algorithms=("HS256",),
                         audience=jwt_kit.AUDIENCE, leeway=0)


def test_a_remembered_token_is_not_verified_again_until_it_expires(jwt_kit, monkeypatch):
    verifier = _verifier(jwt_kit)
    decoded = []
    real_decode = auth_module.jwt.decode
    monkeypatch.setattr(auth_module.jwt, "decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    token = jwt_kit.token(sub="alice", exp_in=60)
    assert [verifier.principal(token).subject for _ in range(3)] == ["alice"] * 3
    assert len(decoded) == 1
    later = time.time() + 61  # past exp: the memory must not outlive the token
    monkeypatch.setattr(auth_module, "time", types.SimpleNamespace(time=lambda: later))
    with pytest.raises(AuthError) as err:
        verifier.principal(token)
    assert err.value.status == 401 and token not in verifier._verified


def test_an_altered_or_wrongly_signed_token_is_refused_after_a_good_one_was_remembered(jwt_kit):
    verifier = _verifier(jwt_kit)
    token = jwt_kit.token(sub="alice", roles=["analyst"])
    verifier.principal(token)
    head, body, signature = token.split(".")
    claims = json.loads(_b64decode(body))
    forged_body = _b64encode(json.dumps({**claims, "roles": ["root"]}).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    forged = jwt_kit.token(sub="alice", roles=["root"], key="x" * 48)
    for attack in (f"{head}.{forged_body}.{signature}", f"{head}.{body}.{flipped}", forged):
        with pytest.raises(AuthError):
            verifier.principal(attack)
    assert list(verifier._verified) == [token]  # nothing refused was remembered


def test_the_token_memory_is_bounded(jwt_kit, monkeypatch):
    monkeypatch.setattr(auth_module, "TOKEN_CACHE_SIZE", 4)
    verifier = _verifier(jwt_kit)
    tokens = [jwt_kit.token(sub=f"user{i}") for i in range(10)]
    assert [verifier.principal(t).subject for t in tokens] == [f"user{i}" for i in range(10)]
    assert list(verifier._verified) == tokens[-4:]


def test_the_serving_session_answers_as_the_bundle_did(serve_host, tiny_bundle, records):
    model = load_models([str(tiny_bundle)], serve_host)["tiny"]
    before = model.run_jobs([records[:5]])[0]
    assert model.tune_for_serving(intra_op_threads=1)
    options = model.predictor.run.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    after = model.run_jobs([records[:5]])[0]
    assert [e["index"] for e in after] == [0, 1, 2, 3, 4]
    assert json.dumps(after, default=lambda v: v.tolist()) == json.dumps(before, default=lambda v: v.tolist())


def test_an_artifact_swapped_after_loading_is_refused(serve_host, tiny_bundle, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_bundle, folder)
    model = load_models([str(folder)], serve_host)["tiny"]
    onnx_file = folder / model.predictor.bundle.meta["artifacts"][model.predictor.artifact]["file"]
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the weights
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(PrivetError, match="changed"):
        model.tune_for_serving(intra_op_threads=1)


def test_concurrent_always_synced_requests_share_fsyncs_and_each_waits_for_its_own(
        serve, records, jwt_kit, tmp_path, monkeypatch):
    from privet.audit import writer

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, hmac_key=bytes(range(32)), fsync="always")
    synced_lines, flushes = [0], []
    real_sync = writer._fdatasync

    def slow_sync(fd: int) -> None:  # a slow disk: concurrent appends pile up behind it
        lines = path.read_bytes().count(b"\n")
        time.sleep(0.02)
        real_sync(fd)
        flushes.append(threading.current_thread().name)
        synced_lines[0] = max(synced_lines[0], lines)

    monkeypatch.setattr(writer, "_fdatasync", slow_sync)
    url = serve(audit=log, settings=ServeSettings(max_batch=1, audit_blocking=True))
    body = json.dumps({"records": records[:1]}).encode()
    unsynced_answers = []

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=jwt_kit.auth(sub="alice")) as c:
            for _ in range(n):
                r = await c.post("/v1/models/tiny:predict", content=body)
                assert r.status_code == 200
                if synced_lines[0] < _line_of(path, r.headers["x-request-id"]):
                    unsynced_answers.append(r.headers["x-request-id"])

    async def load() -> None:
        await asyncio.wait_for(asyncio.gather(*(client(4) for _ in range(16))), 60)

    asyncio.run(load())
    log.close()
    assert verify_log(path, hmac_key=bytes(range(32))).entries == 64
    assert unsynced_answers == []  # no answer left before the fsync that covered its entry
    assert len([f for f in flushes if f.startswith("privet-audit")]) < 64 / 2


def _line_of(path, request_id: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if request_id in line:
            return number
    raise AssertionError(f"{request_id} is not in the audit log")


def _b64decode(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
