from __future__ import annotations

import dataclasses
import json

from fastapi.testclient import TestClient

from tests.support.logs import captured_log
from tests.support.models import IRIS_ROW
from tests.support.tokens import USER


def test_every_response_has_a_request_id(client: TestClient, user_headers: dict[str, str]) -> None:
    responses = [
        client.get("/health"),
        client.get("/no-such-route"),
        client.post("/predict", json={"instances": [IRIS_ROW]}),
        client.post("/predict", json={"instances": []}, headers=user_headers),
        client.post("/predict", json={"instances": [IRIS_ROW]}, headers=user_headers),
    ]
    ids = [r.headers.get("X-Request-ID") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [r.status_code for r in responses] == [200, 404, 401, 422, 200]
    assert all("detail" in r.json() for r in responses[1:4])


def test_a_callers_request_id_is_kept_when_plain(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    forged = client.get("/health", headers={"X-Request-ID": 'x" injected="1'}).headers["X-Request-ID"]
    assert forged != 'x" injected="1' and len(forged) == 32


def test_log_lines_name_route_status_user_and_never_secrets(client: TestClient) -> None:
    with captured_log() as stream:
        token = client.post("/token", data={"username": USER[0], "password": USER[1]}).json()["access_token"]
        predicted = client.post(
            "/predict", json={"instances": [IRIS_ROW]}, headers={"Authorization": f"Bearer {token}"}
        )
        client.get("/no-such-route")
    text = stream.getvalue()
    assert USER[1] not in text and token not in text
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [e for e in lines if e["logger"] == "predictor.access"]
    assert [(e["method"], e["route"], e["status"]) for e in requests] == [
        ("POST", "/token", 200),
        ("POST", "/predict", 200),
        ("GET", "<unmatched>", 404),
    ]
    assert requests[1]["user"] == "alice"
    assert requests[1]["request_id"] == predicted.headers["X-Request-ID"]
    assert requests[1]["latency_ms"] > 0


def test_an_unexpected_error_is_json_without_a_trace(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    predictor = client.app.state.services.serving.current  # type: ignore[attr-defined]
    original = predictor.model

    def explode(_: object) -> None:
        raise RuntimeError("secret internals /srv/app/model.py line 42")

    object.__setattr__(predictor, "model", dataclasses.replace(original, call=explode))
    try:
        response = client.post("/predict", json={"instances": [IRIS_ROW]}, headers=user_headers)
    finally:
        object.__setattr__(predictor, "model", original)
    assert response.status_code == 500
    assert response.json()["detail"] == "Internal server error"
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert response.headers["X-Request-ID"] == response.json()["request_id"]
