"""Limits against a real server: rates per subject, body size, timeout, back-pressure,
and bad bodies answered 400/422 with the record index, never 500."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from privet.serve.app import ServeSettings  # noqa: E402
from privet.serve.models import ServedModel  # noqa: E402


class SlowModel(ServedModel):
    """The real tiny model, taking ``delay`` seconds longer per batch."""

    delay = 0.6

    def run_jobs(self, jobs):
        time.sleep(self.delay)
        return super().run_jobs(jobs)


def slow(served):
    m = served["tiny"]
    return {"tiny": SlowModel(m.name, m.folder, m.predictor, m.bundle_sha256)}


def post(url, body, headers, **kw):
    return httpx.post(f"{url}/v1/models/tiny:predict", headers=headers, timeout=10, **kw,
                      **({"json": body} if not isinstance(body, (bytes, str)) else {"content": body}))


def test_a_burst_over_the_rate_gets_429_with_retry_after_and_others_are_unaffected(serve, records, jwt_kit):
    url = serve(settings=ServeSettings(rate_limit="5/minute"))
    alice, bob = jwt_kit.auth(sub="alice"), jwt_kit.auth(sub="bob")
    codes = [post(url, {"records": records[:1]}, alice) for _ in range(8)]
    assert [r.status_code for r in codes] == [200] * 5 + [429] * 3
    assert codes[-1].json() == {"error": "rate_limited"}
    assert 1 <= int(codes[-1].headers["retry-after"]) <= 60
    assert post(url, {"records": records[:1]}, bob).status_code == 200  # bob has his own bucket
    metrics = httpx.get(f"{url}/metrics", headers=jwt_kit.auth(sub="ops", roles=["ops"])).text
    assert 'privet_serve_rejections_total{reason="rate_limited"} 3.0' in metrics


def test_body_over_the_limit_is_413_declared_or_chunked(serve, records, jwt_kit):
    url = serve(settings=ServeSettings(max_body_bytes=2000))
    auth = jwt_kit.auth()
    assert post(url, {"records": records * 3}, auth).status_code == 413
    chunks = (b'{"records": [' + b'{"x": [1.0]},' * 300 + b'{"x": [1.0]}]}' for _ in range(1))
    response = httpx.post(f"{url}/v1/models/tiny:predict", content=chunks, headers=auth, timeout=10)
    assert response.status_code == 413 and response.json() == {"error": "body_too_large"}
    assert post(url, {"records": records[:2]}, auth).status_code == 200


@pytest.mark.parametrize("max_batch", [1, 32])
def test_a_slow_prediction_is_504_after_the_timeout(serve, served, records, jwt_kit, max_batch):
    url = serve(settings=ServeSettings(request_timeout_s=0.2, max_batch=max_batch), models=slow(served))
    begun = time.monotonic()
    response = post(url, {"records": records[:1]}, jwt_kit.auth())
    assert response.status_code == 504 and response.json() == {"error": "timeout"}
    assert time.monotonic() - begun < SlowModel.delay


@pytest.mark.parametrize("max_batch", [1, 32])
def test_requests_over_max_concurrent_get_503_at_once(serve, served, records, jwt_kit, max_batch):
    url = serve(settings=ServeSettings(max_concurrent=2, max_batch=max_batch), models=slow(served))
    auth = jwt_kit.auth()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(url, {"records": records[:1]}, auth), range(4)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503]
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.json() == {"error": "overloaded"} and refused.headers["retry-after"] == "1"
    assert httpx.get(f"{url}/healthz").status_code == 200


BAD_BODIES = {  # body -> (status, error)
    b'{"records": [': (400, "malformed_json"),
    b"\xff\xfe": (400, "malformed_json"),
    b'{"records": [NaN]}': (400, "malformed_json"),
    b"[1, 2]": (422, "invalid_body"),
    b'{"records": []}': (422, "invalid_body"),
    b'{"records": {"x": 1}}': (422, "invalid_body"),
    b'{"records": [], "extra": 1}': (422, "invalid_body"),
}


@pytest.mark.parametrize("body", list(BAD_BODIES), ids=range(len(BAD_BODIES)))
def test_malformed_bodies_are_4xx_with_a_reason(serve, jwt_kit, body):
    url = serve()
    response = post(url, body, {**jwt_kit.auth(), "content-type": "application/json"})
    status, error = BAD_BODIES[body]
    assert (response.status_code, response.json()["error"]) == (status, error)


def test_wrong_record_shapes_are_422_naming_each_index(serve, records, jwt_kit):
    url = serve()
    body = {"records": [records[0], 7, {"x": [1.0, 2.0]}, {"no_x": 1}, records[1]]}
    response = post(url, body, jwt_kit.auth())
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_record"
    assert [e["index"] for e in response.json()["records"]] == [1]
    response = post(url, {"records": body["records"][2:]}, jwt_kit.auth())
    assert response.status_code == 422
    assert response.json()["records"] == [{"index": 1, "error": "missing_field", "detail": "no field 'x'"}]
    # a record the artifact refuses (8 features expected, 2 given) is named too
    response = post(url, {"records": [records[0], {"x": [1.0, 2.0]}]}, jwt_kit.auth())
    assert response.status_code == 422
    assert response.json()["records"] == [{"index": 1, "error": "prediction_failed"}]
