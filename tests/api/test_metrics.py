"""/metrics: what each kind of traffic adds, read back with REGISTRY.get_sample_value."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sklearn.datasets import load_iris

from app.core.security import create_access_token
from app.main import create_app
from tests.support.models import IRIS_FEATURES, IRIS_ROW
from tests.support.tokens import ADMIN, SECRET, USER, bearer, get_token


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_metrics_are_exposed_with_the_prefix(client: TestClient):
    client.get("/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in (
        "predictor_http_requests_total",
        "predictor_http_request_duration_seconds_bucket",
        "predictor_http_requests_in_flight",
        "predictor_model_info",
        "predictor_model_loaded 1.0",
        "predictor_model_trained_timestamp_seconds",
        'predictor_auth_failures_total{reason="locked"}',
        'predictor_auth_total{method="api_key",result="refused"}',
        'predictor_model_reloads_total{result="refused"}',
    ):
        assert name in response.text, name


def test_metrics_token_is_required_when_set(settings_factory):
    with TestClient(create_app(settings_factory(metrics_token="scrape-me"))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "predictor_" in ok.text


def test_predictions_are_counted_by_version_and_label(client: TestClient, user_headers):
    before = {
        "setosa": sample("predictor_predictions_total", model_version="v1", label="setosa"),
        "rows": sample("predictor_prediction_rows_count"),
        "inference": sample("predictor_inference_duration_seconds_count", model_version="v1"),
        "http": sample("predictor_http_requests_total", method="POST", route="/predict", status="200"),
    }
    response = client.post("/predict", json={"instances": [IRIS_ROW, IRIS_ROW]}, headers=user_headers)
    assert response.status_code == 200
    assert sample("predictor_predictions_total", model_version="v1", label="setosa") == before["setosa"] + 2
    assert sample("predictor_prediction_rows_count") == before["rows"] + 1
    assert sample("predictor_prediction_rows_sum") >= 2
    assert sample("predictor_inference_duration_seconds_count", model_version="v1") == before["inference"] + 1
    assert (
        sample("predictor_http_requests_total", method="POST", route="/predict", status="200")
        == before["http"] + 1
    )
    # Every class has a series from the start, so rate() sees zeros.
    assert (
        REGISTRY.get_sample_value(
            "predictor_predictions_total", {"model_version": "v1", "label": "virginica"}
        )
        is not None
    )


def test_routes_are_templates_never_raw_paths(client: TestClient, admin_headers):
    client.get(f"/users/{USER[0]}", headers=admin_headers)
    client.get("/no/such/path/12345")
    text = client.get("/metrics").text
    assert 'route="/users/{username}"' in text
    assert 'route="<unmatched>"' in text
    assert "12345" not in text and f'route="/users/{USER[0]}"' not in text


def test_authentication_failures_by_reason(client: TestClient, settings):
    def failures(reason: str) -> float:
        return sample("predictor_auth_failures_total", reason=reason)

    before = {
        r: failures(r)
        for r in ("bad_credentials", "locked", "expired", "invalid_token", "insufficient_scope")
    }
    issued = sample("predictor_tokens_issued_total")

    user_token = get_token(client, *USER)
    assert sample("predictor_tokens_issued_total") == issued + 1
    client.post("/token", data={"username": USER[0], "password": "wrong"})
    expired = create_access_token(USER[0], ["predict"], secret=SECRET, expires=timedelta(minutes=-1))
    client.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer(expired))
    client.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer("not.a.token"))
    client.post("/model/reload", headers=bearer(user_token))  # a predict-only token on an admin route
    for _ in range(settings.login_max_failures):
        client.post("/token", data={"username": "mallory", "password": "guess"})
    assert client.post("/token", data={"username": "mallory", "password": "guess"}).status_code == 429

    assert failures("bad_credentials") == before["bad_credentials"] + 1 + settings.login_max_failures
    assert failures("expired") == before["expired"] + 1
    assert failures("invalid_token") == before["invalid_token"] + 1
    assert failures("insufficient_scope") == before["insufficient_scope"] + 1
    assert failures("locked") == before["locked"] + 1


def test_validation_errors_by_field_with_bounded_labels(client: TestClient, user_headers):
    before_field = sample("predictor_validation_errors_total", field="sepal_length")
    before_other = sample("predictor_validation_errors_total", field="_other")
    bad = dict(IRIS_ROW, sepal_length="abc")
    assert client.post("/predict", json={"instances": [bad]}, headers=user_headers).status_code == 422
    extra = dict(IRIS_ROW, made_up_field_9z=1)
    assert client.post("/predict", json={"instances": [extra]}, headers=user_headers).status_code == 422
    assert sample("predictor_validation_errors_total", field="sepal_length") == before_field + 1
    assert sample("predictor_validation_errors_total", field="_other") == before_other + 1
    assert "made_up_field_9z" not in client.get("/metrics").text


def test_model_gauges_and_reloads(client: TestClient, admin_headers, model_dir):
    assert sample("predictor_model_loaded") == 1
    assert sample("predictor_model_info", version="v1", name="logistic_regression", run_id="") == 1
    assert sample("predictor_model_trained_timestamp_seconds") == 1795392000.0  # 2026-11-23T00:00:00Z
    success = sample("predictor_model_reloads_total", result="success")
    refused = sample("predictor_model_reloads_total", result="refused")
    assert client.post("/model/reload", headers=admin_headers).status_code == 200
    (model_dir / "model.joblib").write_bytes(b"not a pickle")
    assert client.post("/model/reload", headers=admin_headers).status_code == 409
    assert sample("predictor_model_reloads_total", result="success") == success + 1
    assert sample("predictor_model_reloads_total", result="refused") == refused + 1


def test_drift_gauges_move_with_shifted_inputs(settings_factory):
    settings = settings_factory(
        max_batch_rows=1000, drift_window=150, drift_min_rows=50, drift_refresh_seconds=0
    )
    iris = load_iris().data
    typical = [dict(zip(IRIS_FEATURES, map(float, row), strict=True)) for row in iris]
    with TestClient(create_app(settings)) as client:
        headers = bearer(get_token(client, *ADMIN))
        assert client.post("/predict", json={"instances": typical}, headers=headers).status_code == 200
        for feature in IRIS_FEATURES:
            assert sample("predictor_feature_psi", feature=feature) < 0.1, feature
        assert sample("predictor_prediction_psi") < 0.1
        shifted = dict(IRIS_ROW, sepal_width=4.4, petal_length=6.9)
        assert (
            client.post("/predict", json={"instances": [shifted] * 150}, headers=headers).status_code == 200
        )
        assert sample("predictor_feature_psi", feature="petal_length") > 0.2
        assert sample("predictor_feature_psi", feature="sepal_width") > 0.2
        assert sample("predictor_prediction_psi") > 0.2


def test_metrics_can_be_switched_off(settings_factory):
    with TestClient(create_app(settings_factory(metrics_enabled=False))) as client:
        headers = bearer(get_token(client, *ADMIN))
        before = sample("predictor_http_requests_total", method="POST", route="/predict", status="200")
        client.post("/predict", json={"instances": [IRIS_ROW]}, headers=headers)
        assert (
            sample("predictor_http_requests_total", method="POST", route="/predict", status="200") == before
        )
