"""bench/ceiling.py, the bare FastAPI app the bench measures ours against: it answers, and validates."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from bench.ceiling import DEFAULT_FEATURES, HEALTH, PREDICTION, create_app
from bench.harness import predictor_body, sample_rows

FEATURES = [{"name": name, "type": "numeric", "min": 0.0, "max": 8.0} for name in DEFAULT_FEATURES]


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app())


def test_predict_takes_our_body_and_answers_a_constant(client: TestClient):
    body = predictor_body(sample_rows(FEATURES, 1))
    answer = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert answer.json() == PREDICTION


def test_predict_validates_the_rows_with_pydantic(client: TestClient):
    row = dict.fromkeys(DEFAULT_FEATURES, 1.0)
    assert client.post("/predict", json={"instances": [row]}).status_code == 200
    assert client.post("/predict", json={"instances": [{**row, "petal_width": "wide"}]}).status_code == 422
    assert client.post("/predict", json={"instances": [{"sepal_length": 1.0}]}).status_code == 422


def test_health_answers_a_constant(client: TestClient):
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == HEALTH


def test_the_features_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BENCH_CEILING_FEATURES", "a,b")
    client = TestClient(create_app())
    assert client.post("/predict", json={"instances": [{"a": 1, "b": 2}]}).status_code == 200
    assert (
        client.post("/predict", json={"instances": [dict.fromkeys(DEFAULT_FEATURES, 1.0)]}).status_code == 422
    )
