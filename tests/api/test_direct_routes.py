"""GET /health and POST /predict served by their endpoints called directly (app.api.direct_routes),
exactly as FastAPI's declared routes would serve them.

Each request is sent twice: to the app as it serves, and to the same app without the direct routes,
so the declared APIRoutes answer. Status, headers and body must be the same, and the status and the
headers that matter must be the ones listed (the answers before the direct routes, HotRoutes').
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.api.direct_routes import RequestRoute, direct_route
from app.core.config import Settings
from app.db import crud
from app.main import create_app
from tests.support.answers import masked
from tests.support.models import IRIS_ROW
from tests.support.tokens import ADMIN, USER, bearer, get_token

# The headers whose value is part of the answer (the rest: date, length, request id).
HEADERS = ("content-type", "www-authenticate", "allow", "location", "retry-after")


def _without_direct_routes(app: FastAPI) -> FastAPI:
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, RequestRoute))]
    return app


@pytest.fixture
def clients(settings_factory: Callable[..., Settings]) -> Iterator[tuple[TestClient, TestClient]]:
    direct, routed = create_app(settings_factory()), _without_direct_routes(create_app(settings_factory()))
    with TestClient(direct) as direct_client, TestClient(routed) as routed_client:
        # One database for both apps (the same settings): the user is made once.
        with direct_client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        yield direct_client, routed_client


def _answer(client: TestClient, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    response = client.request(method, url, follow_redirects=False, **kwargs)
    headers = {k: v for k, v in response.headers.items() if k not in {"x-request-id", "content-length"}}
    return response.status_code, headers, masked(response.text)  # prediction ids are random


def test_every_answer_is_the_declared_routes(clients: tuple[TestClient, TestClient]) -> None:
    direct, routed = clients
    user = bearer(get_token(direct, *USER))
    admin_only = bearer(get_token(direct, *ADMIN, scope="admin"))
    one = {"json": {"instances": [IRIS_ROW]}}
    json_type = {"content-type": "application/json"}
    bearer_401 = {"www-authenticate": "Bearer"}
    # method, url, request, expected status, expected headers (of HEADERS)
    cases: list[tuple[str, str, dict[str, Any], int, dict[str, str]]] = [
        ("GET", "/health", {}, 200, json_type),
        ("HEAD", "/health", {}, 405, {"allow": "GET"} | json_type),
        ("POST", "/health", {}, 405, {"allow": "GET"} | json_type),
        ("POST", "/predict", one | {"headers": user}, 200, json_type),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW] * 2}, "headers": user}, 200, json_type),
        ("POST", "/predict?compare=true", one | {"headers": user}, 200, json_type),
        ("POST", "/predict?compare=maybe", one | {"headers": user}, 422, json_type),
        ("POST", "/predict", one, 401, bearer_401 | json_type),
        ("POST", "/predict", one | {"headers": bearer("not-a-token")}, 401, bearer_401 | json_type),
        (
            "POST",
            "/predict",
            one | {"headers": admin_only},
            403,
            {"www-authenticate": 'Bearer scope="predict"'} | json_type,
        ),
        (
            "POST",
            "/predict",
            {"json": {"instances": [IRIS_ROW | {"sepal_length": "x"}]}, "headers": user},
            422,
            json_type,
        ),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW] * 6}, "headers": user}, 422, json_type),
        ("POST", "/predict", {"content": b"{not json", "headers": user}, 422, json_type),
        ("GET", "/predict", {"headers": user}, 405, {"allow": "POST"} | json_type),
        ("POST", "/predict/", one | {"headers": user}, 307, {"location": "http://testserver/predict"}),
        ("GET", "/health/", {}, 307, {"location": "http://testserver/health"}),
    ]
    for method, url, kwargs, status, headers in cases:
        served = _answer(direct, method, url, **kwargs)
        assert served == _answer(routed, method, url, **kwargs), (method, url, kwargs)
        assert (served[0], {k: v for k, v in served[1].items() if k in HEADERS}) == (status, headers), (
            method,
            url,
        )


def test_without_a_model_predict_is_a_503_as_declared(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(model_dir=tmp_path / "empty")
    with (
        TestClient(create_app(settings)) as direct,
        TestClient(_without_direct_routes(create_app(settings))) as routed,
    ):
        request = {"json": {"instances": [IRIS_ROW]}, "headers": bearer(get_token(direct, *ADMIN))}
        served = _answer(direct, "POST", "/predict", **request)
        assert served == _answer(routed, "POST", "/predict", **request)
        assert served[0] == 503 and served[2].startswith('{"detail":"model not loaded')
        assert _answer(direct, "GET", "/health") == _answer(routed, "GET", "/health")


def test_the_metrics_and_access_log_name_the_route(
    clients: tuple[TestClient, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    direct, _ = clients
    with caplog.at_level("INFO"):
        direct.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer(get_token(direct, *USER)))
        direct.get("/health")
    routes = [getattr(r, "fields", {}).get("route") for r in caplog.records if r.name.endswith(".access")]
    assert routes[-2:] == ["/predict", "/health"]
    metrics = direct.get("/metrics").text
    assert 'route="/predict",status="200"' in metrics
    assert 'route="/health",status="200"' in metrics


# The operations as /openapi.json documented them before the direct routes (with HotRoutes).
PREDICT_OPERATION = {
    "tags": ["predict"],
    "summary": "Predict",
    "description": 'Predict for 1 to MAX_BATCH_ROWS rows, given as `{"instances": [{feature: value, ...}]}`.',
    "operationId": "predict_predict_post",
    "responses": {
        "200": {
            "description": "Successful Response",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
        },
        "422": {"description": "Invalid rows: each error names the row and the field"},
        "429": {"description": "Past RATE_LIMIT_PREDICT for this user; see Retry-After"},
    },
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    },
    "security": [{"OAuth2PasswordBearer": ["predict"]}, {"APIKeyHeader": []}],
    "parameters": [
        {
            "name": "compare",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean", "default": False, "title": "Compare"},
            "description": "Also answer every candidate's predictions from the last training run",
        }
    ],
}
HEALTH_OPERATION = {
    "tags": ["health"],
    "summary": "Health",
    "description": "Liveness: the process answers. Says which model version it serves, if any.",
    "operationId": "health_health_get",
    "responses": {
        "200": {
            "description": "Successful Response",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
        }
    },
}


def test_openapi_documents_the_declared_operations_once(clients: tuple[TestClient, TestClient]) -> None:
    direct, routed = clients
    spec = direct.get("/openapi.json").json()
    assert spec["paths"]["/predict"] == {"post": PREDICT_OPERATION}
    assert spec["paths"]["/health"] == {"get": HEALTH_OPERATION}
    assert list(spec["paths"])[:3] == ["/predict", "/health", "/ready"]
    assert direct.get("/openapi.json").content == routed.get("/openapi.json").content


def test_a_route_that_needs_fastapi_is_refused() -> None:
    router = APIRouter()

    @router.get("/with-a-dependency")
    async def with_a_dependency(request: Request, value: int = Depends(lambda: 1)) -> dict[str, int]:
        return {"value": value}

    @router.get("/plain-def")
    def plain_def(request: Request) -> dict[str, int]:
        return {}

    for route in router.routes:
        assert isinstance(route, APIRoute)
        with pytest.raises(ValueError, match="needs FastAPI's APIRoute"):
            direct_route(route)
