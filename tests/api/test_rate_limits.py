"""Limits per client: /token per address across usernames, the prediction routes per user; 429 with
Retry-After, counted by route and reason, shared through Redis by every replica, fail-open when it is
down (or closed, as a setting says)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db import crud
from app.main import create_app
from tests.support.models import IRIS_ROW, write_model
from tests.support.redis_db import scratch_redis
from tests.support.servers import api_server, free_port
from tests.support.tokens import ADMIN, USER, bearer, get_token

V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _limited(metrics: str, route: str, reason: str) -> float:
    prefix = f'predictor_rate_limited_total{{reason="{reason}",route="{route}"}} '
    found = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0].split()[-1]) if found else 0.0


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def _with_users(client: TestClient) -> TestClient:
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        if crud.get_user(session, USER[0]) is None:
            crud.create_user(session, *USER, scopes=["predict"])
        if crud.get_user(session, "bob") is None:
            crud.create_user(session, "bob", "bob-password-1", scopes=["predict"])
    return client


@pytest.fixture
def redis_url() -> Iterator[str]:
    with scratch_redis() as url:
        yield url


def test_token_attempts_are_limited_per_address_across_usernames(
    settings_factory: Callable[..., Settings],
) -> None:
    with _client(settings_factory(rate_limit_token="3/minute")) as client:
        _with_users(client)
        before = _limited(client.get("/metrics").text, "/token", "client")
        answers = [
            client.post("/token", data={"username": name, "password": "wrong-password"}).status_code
            for name in ("alice", "bob", "nobody")
        ]
        assert answers == [401, 401, 401]
        refused = client.post("/token", data={"username": ADMIN[0], "password": ADMIN[1]})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.json()["detail"].startswith("Too many requests: at most 3 per 1 minute")
        # The refresh endpoint is counted with it: same address.
        assert (
            client.post(
                "/token/refresh", data={"grant_type": "refresh_token", "refresh_token": "x"}
            ).status_code
            == 429
        )
        assert _limited(client.get("/metrics").text, "/token", "client") == before + 1


def test_predictions_are_limited_per_user_on_every_prediction_route(
    settings_factory: Callable[..., Settings],
) -> None:
    with _client(settings_factory(rate_limit_predict="3/minute", rate_limit_token="")) as client:
        _with_users(client)
        routes = ("/predict", "/v2/models/{name}/infer", "/predict/csv")
        before = {route: _limited(client.get("/metrics").text, route, "user") for route in routes}
        alice, bob = bearer(get_token(client, *USER)), bearer(get_token(client, "bob", "bob-password-1"))
        assert client.post("/predict", json={"instances": [IRIS_ROW]}, headers=alice).status_code == 200
        csv = "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n"
        csv_headers = alice | {"Content-Type": "text/csv"}
        assert client.post("/predict/csv", content=csv, headers=csv_headers).status_code == 200
        assert client.post("/v2/models/predictor/infer", json=V2_BODY, headers=alice).status_code == 200
        # The fourth of alice's, whatever the route.
        refused = client.post("/predict", json={"instances": [IRIS_ROW]}, headers=alice)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "at most 3 per 1 minute" in refused.json()["detail"]
        v2 = client.post("/v2/models/predictor/infer", json=V2_BODY, headers=alice)
        assert v2.status_code == 429 and set(v2.json()) == {"error"} and "Retry-After" in v2.headers
        assert client.post("/predict/csv", content=csv, headers=csv_headers).status_code == 429
        # Bob has his own count; an invalid token is a 401 before any count.
        assert client.post("/predict", json={"instances": [IRIS_ROW]}, headers=bob).status_code == 200
        assert client.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer("x")).status_code == 401
        metrics = client.get("/metrics").text
        assert {route: _limited(metrics, route, "user") - before[route] for route in routes} == dict.fromkeys(
            routes, 1
        )


@pytest.mark.redis
def test_replicas_count_together_through_redis(
    settings_factory: Callable[..., Settings], redis_url: str
) -> None:
    make = lambda: _client(settings_factory(rate_limit_predict="4/minute", redis_url=redis_url))  # noqa: E731
    with make() as first, make() as second:
        _with_users(first)
        token = bearer(get_token(first, *USER))
        statuses = [
            replica.post("/predict", json={"instances": [IRIS_ROW]}, headers=token).status_code
            for replica in (first, second, first, second, first, second)
        ]
        assert statuses == [200, 200, 200, 200, 429, 429]


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_down_lets_predictions_through_or_refuses_them_as_set(
    settings_factory: Callable[..., Settings], fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_factory(
        rate_limit_predict="1/minute",
        rate_limit_token="",  # fail-closed would refuse the logins too
        rate_limit_fail_open=fail_open,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    )
    with _client(settings) as client, caplog.at_level("WARNING"):
        _with_users(client)
        token = bearer(get_token(client, *USER))
        statuses = {
            client.post("/predict", json={"instances": [IRIS_ROW]}, headers=token).status_code
            for _ in range(3)
        }
        assert statuses == ({200} if fail_open else {503})
        assert "predictor_rate_limit_store_up 0.0" in client.get("/metrics").text
    warned = [r for r in caplog.records if "rate limit store unreachable" in r.getMessage()]
    assert len(warned) == 1  # once per outage, not per request


def test_a_limit_that_cannot_be_read_stops_the_settings(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="not a rate limit"):
        settings_factory(rate_limit_predict="fast please")


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [True, False])
def test_the_client_address_comes_from_a_trusted_proxy_only(tmp_path: Path, trusted: bool) -> None:
    """Behind a proxy named in FORWARDED_ALLOW_IPS, X-Forwarded-For is the address counted; otherwise
    the socket's, so a client cannot spread its attempts over made-up addresses."""
    write_model(tmp_path / "models")
    env: dict[str, Any] = {"RATE_LIMIT_TOKEN": "2/minute"}
    if trusted:
        env["FORWARDED_ALLOW_IPS"] = "127.0.0.1"
    with api_server(tmp_path, tmp_path / "models", **env) as api:

        def attempt(address: str) -> int:
            form = {"username": "nobody", "password": "wrong-password"}
            headers = {"X-Forwarded-For": address}
            return httpx.post(f"{api.url}/token", data=form, headers=headers, timeout=10).status_code

        first = [attempt("203.0.113.7") for _ in range(3)]
        assert first == [401, 401, 429]
        assert attempt("198.51.100.9") == (401 if trusted else 429)
