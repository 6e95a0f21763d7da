"""Property-based fuzzing (Schemathesis) of a real server from its served OpenAPI schema:
whatever the body, path or parameters, no answer is a 5xx."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from privet.serve.app import ServeSettings  # noqa: E402

#: Examples per operation: bounded so the whole file stays within a few seconds.
EXAMPLES = 30


def test_no_generated_request_gets_a_server_error(serve, jwt_kit):
    from schemathesis.checks import not_a_server_error

    url = serve(settings=ServeSettings(rate_limit=None, max_wait_ms=0))
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = jwt_kit.auth(roles=["root"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/models/{name}:predict", "/v1/models", "/metrics"}
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=url, headers=headers, timeout=10)
            case.validate_response(response, checks=[not_a_server_error])

        check()


def test_the_schema_documents_the_body_and_the_refusals(serve):
    import httpx

    schema = httpx.get(f"{serve()}/openapi.json").json()
    predict = schema["paths"]["/v1/models/{name}:predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["records"]
    assert {"400", "401", "403", "404", "413", "422", "429", "503", "504"} <= set(predict["responses"])
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()
