"""The gateway's audit trail: every request, accepted or refused, is one verified entry
written before its answer leaves; a log that cannot be written fails the request closed."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

pytest.importorskip("fastapi")

from privet.audit import AuditLog, open_inputs, verify_log  # noqa: E402
from privet.serve.app import ServeSettings  # noqa: E402

KEY = bytes(range(32))
INPUTS_KEY = bytes(range(32, 64))


def requests_in(path) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in entries if e.get("kind") == "request"]


def test_every_request_accepted_or_refused_is_audited_once(serve, served, records, jwt_kit, tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, hmac_key=KEY, fsync="never", inputs_key=INPUTS_KEY)
    url = serve(audit=log, settings=ServeSettings(rate_limit="3/minute", max_body_bytes=4000,
                                                  audit_inputs=True))
    ok = jwt_kit.auth(sub="alice")
    body = json.dumps({"records": records[:2]}).encode()
    sent = [
        httpx.post(f"{url}/v1/models/tiny:predict", content=body, headers=ok),            # 200
        httpx.post(f"{url}/v1/models/tiny:predict", json={"records": [1]}, headers=ok),  # 422
        httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records[:1]}),      # 401
        httpx.get(f"{url}/metrics", headers=jwt_kit.auth(sub="carol", roles=["viewer"])),  # 403
        httpx.get(f"{url}/v1/models", headers=ok),                                       # 200
        httpx.get(f"{url}/v1/models", headers=ok),                                       # 429
        httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records * 3}, headers=ok),  # 413
    ]
    assert [r.status_code for r in sent] == [200, 422, 401, 403, 200, 429, 413]
    httpx.get(f"{url}/healthz")  # probes are not audited (a load balancer polls them)
    log.close()
    assert verify_log(path, hmac_key=KEY).entries == len(sent)
    entries = requests_in(path)
    assert [e["status"] for e in entries] == [r.status_code for r in sent]
    assert [e["request_id"] for e in entries] == [r.headers["x-request-id"] for r in sent]
    first = entries[0]
    assert (first["subject"], first["role"], first["model"]) == ("alice", "analyst", "tiny")
    assert first["bundle_sha256"] == served["tiny"].bundle_sha256
    assert first["input_sha256"] == hashlib.sha256(body).hexdigest()
    assert first["output"] == sent[0].json()["predictions"]
    assert "inputs" not in first and open_inputs(first, INPUTS_KEY) == records[:2]
    assert records[0]["id"] is not None and str(records[0]["x"][0]) not in path.read_text()
    assert [e["reason"] for e in entries[1:]] == ["invalid_record", "unauthorized", "forbidden",
                                                  None, "rate_limited", "body_too_large"]
    assert entries[2]["subject"] is None and entries[3]["subject"] == "carol"


class BrokenLog:
    """An audit log whose disk is full."""

    def append(self, entry):
        raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_an_unwritable_audit_log_fails_requests_closed(serve, records, jwt_kit):
    url = serve(audit=BrokenLog())
    response = httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records[:1]},
                          headers=jwt_kit.auth())
    assert response.status_code == 503 and response.json() == {"error": "audit_unavailable"}
    assert "predictions" not in response.text
