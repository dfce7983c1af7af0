"""GET /health and POST /predict answered before the router (app.api.hot_routes), exactly as through it.

Each request is sent twice: to the app as it serves, and to the same app with the hot routes taken
out of its middleware, so FastAPI's router answers. Status, headers and body must be the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient

from app.api.hot_routes import HotRoutes
from app.core.config import Settings
from app.db import crud
from app.main import create_app
from tests.support.answers import masked
from tests.support.models import IRIS_ROW
from tests.support.tokens import ADMIN, USER, bearer, get_token


def _without_hot_routes(app: FastAPI) -> FastAPI:
    # The middleware stack is built on the first request: taking it out before then is enough.
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HotRoutes]
    return app


@pytest.fixture
def clients(settings_factory: Callable[..., Settings]) -> Iterator[tuple[TestClient, TestClient]]:
    hot, routed = create_app(settings_factory()), _without_hot_routes(create_app(settings_factory()))
    with TestClient(hot) as hot_client, TestClient(routed) as routed_client:
        # One database for both apps (the same settings): the user is made once.
        with hot_client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        yield hot_client, routed_client


def _answer(client: TestClient, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    response = client.request(method, url, **kwargs)
    headers = {k: v for k, v in response.headers.items() if k not in {"x-request-id", "content-length"}}
    return response.status_code, headers, masked(response.text)  # prediction ids are random


def test_every_answer_is_the_routers(clients: tuple[TestClient, TestClient]) -> None:
    hot, routed = clients
    user = bearer(get_token(hot, *USER))
    admin_only = bearer(get_token(hot, *ADMIN, scope="admin"))
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health", {}),
        ("HEAD", "/health", {}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW]}, "headers": user}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW, IRIS_ROW]}, "headers": user}),
        ("POST", "/predict?compare=true", {"json": {"instances": [IRIS_ROW]}, "headers": user}),
        ("POST", "/predict?compare=maybe", {"json": {"instances": [IRIS_ROW]}, "headers": user}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW]}}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW]}, "headers": bearer("not-a-token")}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW]}, "headers": admin_only}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW | {"sepal_length": "x"}]}, "headers": user}),
        ("POST", "/predict", {"json": {"instances": [IRIS_ROW] * 6}, "headers": user}),
        ("POST", "/predict", {"content": b"{not json", "headers": user}),
        ("GET", "/predict", {"headers": user}),
        ("POST", "/predict/", {"json": {"instances": [IRIS_ROW]}, "headers": user}),
    ]
    for method, url, kwargs in cases:
        served = _answer(hot, method, url, **kwargs)
        assert served == _answer(routed, method, url, **kwargs), (method, url, kwargs)
    # The cases reach the hot routes' answers that matter: a prediction, and each refusal.
    statuses = {_answer(hot, m, u, **k)[0] for m, u, k in cases}
    assert {200, 401, 403, 405, 422} <= statuses


def test_the_metrics_and_access_log_name_the_route(
    clients: tuple[TestClient, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    hot, _ = clients
    with caplog.at_level("INFO"):
        hot.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer(get_token(hot, *USER)))
    routes = [getattr(r, "fields", {}).get("route") for r in caplog.records if r.name.endswith(".access")]
    assert routes[-1] == "/predict"
    metrics = hot.get("/metrics").text
    assert 'route="/predict",status="200"' in metrics


def test_a_route_that_needs_the_router_is_refused() -> None:
    router = APIRouter()

    @router.get("/with-a-dependency")
    async def with_a_dependency(request: Request, value: int = Depends(lambda: 1)) -> dict[str, int]:
        return {"value": value}

    @router.get("/plain-def")
    def plain_def(request: Request) -> dict[str, int]:
        return {}

    for route in router.routes:
        with pytest.raises(ValueError, match="needs the router"):
            HotRoutes(FastAPI(), routes=[route], handlers={})  # type: ignore[list-item]
