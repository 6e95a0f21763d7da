"""Micro-batching and metrics: concurrent requests share model calls, answers are the
same as ``privet predict``'s, and /metrics counts requests, latency, batches, refusals."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import pytest

pytest.importorskip("fastapi")

from privet.serve.app import ServeSettings  # noqa: E402


def predict_locally(served, records):
    """What ``privet predict`` writes for these records (its Predictor, in process)."""
    entries = served["tiny"].predictor.predict(iter((f"record {i}", r) for i, r in enumerate(records)))
    return [{k: v for k, v in e.items() if k != "location"} for e in entries]


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f"{k}=\"{v}\"" for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else rf"^{re.escape(name)} (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.groups()[-1])
    raise AssertionError(f"{name}{labels} not in /metrics: {[l for l in text.splitlines() if l.startswith(name)]}")


def test_concurrent_requests_share_batches_and_answer_like_predict(serve, served, records, jwt_kit):
    url = serve(settings=ServeSettings(max_batch=64, max_wait_ms=150))
    auth = jwt_kit.auth()

    def one(i: int) -> dict:
        response = httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records[i:i + 1]},
                              headers=auth, timeout=10)
        assert response.status_code == 200
        return response.json()["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    expected = predict_locally(served, records[:8])
    for got, want in zip(answers, expected):
        assert (got["id"], got["label"]) == (want["id"], want["label"])
        assert got["probabilities"] == want["probabilities"]
    text = httpx.get(f"{url}/metrics", headers=jwt_kit.auth(roles=["ops"])).text
    batches = metric(text, "privet_serve_batch_records_count", model="tiny")
    assert metric(text, "privet_serve_batch_records_sum", model="tiny") == 8
    assert batches < 8  # some requests shared a model call
    assert metric(text, "privet_serve_requests_total", route="/v1/models/{name}:predict",
                  model="tiny", status="200") == 8
    assert metric(text, "privet_serve_request_seconds_count", route="/v1/models/{name}:predict") == 8


def test_a_many_record_request_matches_predict_in_order(serve, served, records, jwt_kit):
    url = serve(settings=ServeSettings(max_batch=16))
    response = httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records},
                          headers=jwt_kit.auth(), timeout=10)
    got = response.json()["predictions"]
    want = predict_locally(served, records)
    assert [g["index"] for g in got] == list(range(len(records)))
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["probabilities"] for g in got] == [w["probabilities"] for w in want]


def test_refusals_are_counted_by_reason_with_bounded_labels(serve, jwt_kit):
    url = serve()
    httpx.get(f"{url}/v1/models")
    httpx.get(f"{url}/no/such/path/{'x' * 50}")
    httpx.post(f"{url}/v1/models/tiny:predict", content=b"{", headers=jwt_kit.auth())
    text = httpx.get(f"{url}/metrics", headers=jwt_kit.auth(roles=["ops"])).text
    assert metric(text, "privet_serve_rejections_total", reason="unauthorized") == 1
    assert metric(text, "privet_serve_rejections_total", reason="not_found") == 1
    assert metric(text, "privet_serve_rejections_total", reason="malformed_json") == 1
    assert "x" * 50 not in text  # a client's path never becomes a label
    assert metric(text, "privet_serve_requests_total", route="other", model="", status="404") == 1
