"""GET /monitoring against a hand-computed set of logged, labelled and shadowed rows."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.artifacts import REFERENCE_PROFILE_FILE, ReferenceProfile
from app.core.config import Settings
from app.db import crud
from app.db.prediction_log import PredictionLogStore, Truth
from app.main import create_app
from tests.support.models import IRIS_ROW
from tests.support.tokens import ADMIN, USER, bearer, get_token

NOW = time.time()
# Two whole hours, both within the default 24 h window and both older than one hour.
HOUR = math.floor(NOW / 3600) - 2
FIRST, SECOND = HOUR * 3600, (HOUR + 1) * 3600


def iso(unix: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def unix(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


def logged(
    prediction_id: str,
    at: float,
    label: str | None = None,
    confidence: float | None = None,
    value: float | None = None,
    version: str = "v1",
    **features: Any,
) -> dict[str, Any]:
    answer = {"label": label} if label is not None else {"value": value}
    return {
        "prediction_id": prediction_id,
        "created_at": at,
        "model_version": version,
        "username": "alice",
        "features": json.dumps(features),
        "answer": json.dumps(answer),
        "predicted_label": label,
        "predicted_value": value,
        "confidence": confidence,
    }


def shadowed(
    prediction_id: str, version: str, at: float, label: str | None = None, value: float | None = None
):
    return {
        "prediction_id": prediction_id,
        "version": version,
        "created_at": at,
        "predicted_label": label,
        "predicted_value": value,
    }


def store_of(client: TestClient) -> PredictionLogStore:
    return client.app.state.services.predictions  # type: ignore[attr-defined]


@pytest.fixture
def iris_log(client: TestClient) -> dict[str, float]:
    """The served iris model's log: two hours of two versions, a row too old for the window, two shadows.

    petal_length is below the profile's first edge (0.5) or above its last (10): first or last bin."""
    rows = [
        logged("old", NOW - 30 * 3600, "setosa", 0.99, petal_length=0.5),
        logged("r1", FIRST + 10, "setosa", 0.9, petal_length=0.5, sepal_length=None),
        logged("r2", FIRST + 20, "setosa", 0.7, petal_length=0.5, sepal_length=5.0),
        logged("r3", FIRST + 30, "virginica", 0.8, petal_length=10, sepal_length=5.0),
        logged("r4", SECOND + 10, "versicolor", 0.6, version="v0", petal_length=10, sepal_length=5.0),
        logged("r5", SECOND + 20, "setosa", 1.0, petal_length=10, sepal_length=5.0),
    ]
    shadows = [
        shadowed("r4", "s-old", SECOND + 11, "versicolor"),
        shadowed("r1", "s-new", SECOND + 30, "setosa"),
        shadowed("r2", "s-new", SECOND + 31, "virginica"),
        shadowed("r3", "s-new", SECOND + 32, "virginica"),
        shadowed("old", "s-new", SECOND + 33, "virginica"),  # its row is outside the window
    ]
    store = store_of(client)
    store.insert(rows, shadows)
    truths = {"old": "versicolor", "r1": "setosa", "r2": "versicolor", "r4": "versicolor", "r5": "setosa"}
    labelled_at = NOW - 60
    store.label([Truth(i, label=label) for i, label in truths.items()], at=labelled_at)
    return {"labelled_at": labelled_at}


def monitoring(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/monitoring", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_quality_per_hour_and_version_with_the_expected_accuracy(
    client: TestClient, admin_headers: dict[str, str], iris_log: dict[str, float]
) -> None:
    quality = monitoring(client, admin_headers)["quality"]
    hourly = {(h["hour"], h["model_version"]): h for h in quality["hourly"]}
    assert list(hourly) == [(iso(FIRST), "v1"), (iso(SECOND), "v0"), (iso(SECOND), "v1")]

    first = hourly[iso(FIRST), "v1"]
    # r1 right, r2 wrong, r3 unlabelled. F1: setosa 2*1/(2+1), versicolor 0.
    assert (first["predictions"], first["labelled"]) == (3, 2)
    assert first["accuracy"] == pytest.approx(0.5)
    assert first["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert first["expected_accuracy"] == pytest.approx((0.9 + 0.7 + 0.8) / 3)
    assert first["mae"] is None and first["rmse"] is None

    older = hourly[iso(SECOND), "v0"]
    assert (older["predictions"], older["labelled"], older["accuracy"]) == (1, 1, 1.0)
    assert older["expected_accuracy"] == pytest.approx(0.6)

    v1 = {v["model_version"]: v for v in quality["versions"]}["v1"]
    assert (v1["predictions"], v1["labelled"]) == (4, 3)
    assert v1["accuracy"] == pytest.approx(2 / 3)
    assert v1["expected_accuracy"] == pytest.approx((0.9 + 0.7 + 0.8 + 1.0) / 4)
    assert quality["thresholds"] == {"accuracy_min": 0.8, "mae_max": None, "min_labels": 50}


def test_drift_compares_the_training_bins_with_the_windows_inputs(
    client: TestClient, admin_headers: dict[str, str], iris_log: dict[str, float], model_dir: Path
) -> None:
    report = monitoring(client, admin_headers)
    drift = report["drift"]
    assert (drift["model_version"], drift["rows"], drift["max_rows"]) == ("v1", 5, 10_000)
    assert drift["unavailable"] is None
    features = {f["feature"]: f for f in drift["features"]}
    assert list(features) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]

    profile = ReferenceProfile.model_validate_json((model_dir / REFERENCE_PROFILE_FILE).read_text())
    reference = profile.features["petal_length"]
    petal = features["petal_length"]
    assert petal["training"] == reference.bin_proportions  # type: ignore[union-attr]
    assert len(petal["bins"]) == len(petal["recent"]) == len(reference.bin_edges) + 1  # type: ignore[union-attr]
    # r1, r2 in the first bin; r3, r4, r5 in the last ("old" is outside the window).
    assert petal["rows"] == 5
    assert petal["recent"] == pytest.approx([0.4] + [0.0] * (len(petal["bins"]) - 2) + [0.6])
    floor = 1e-4  # drift.EPSILON
    expected_psi = sum(
        (max(a, floor) - max(e, floor)) * math.log(max(a, floor) / max(e, floor))
        for a, e in zip(petal["recent"], petal["training"], strict=True)
    )
    assert petal["psi"] == pytest.approx(expected_psi)
    assert petal["bins"][0].startswith("<= ") and petal["bins"][-1].startswith("> ")

    # r1's sepal_length was missing: left out, as the live monitor leaves it out.
    assert features["sepal_length"]["rows"] == 4
    # No row sent sepal_width: nothing to compare.
    assert features["sepal_width"]["rows"] == 0 and features["sepal_width"]["psi"] is None


def test_the_shadows_agreement_with_the_champion(
    client: TestClient, admin_headers: dict[str, str], iris_log: dict[str, float]
) -> None:
    shadow = monitoring(client, admin_headers)["shadow"]
    assert shadow["current"] is None  # none running now: these answered earlier
    # Newest first, by the newest logged row each answered: s-old's r4 came after s-new's r1 to r3.
    assert [v["version"] for v in shadow["versions"]] == ["s-old", "s-new"]
    old, new = shadow["versions"]
    # r1 and r3 as the champion answered, r2 not; the old row is outside the window.
    assert (new["compared"], new["agreed"]) == (3, 2)
    assert new["agreement"] == pytest.approx(2 / 3)
    assert new["mean_absolute_difference"] is None  # a classifier's
    assert new["last_seen"] == iso(FIRST + 30)  # r3, the newest logged row it answered
    # Its own answers to the labelled rows: r1 right, r2 wrong.
    assert new["quality"]["labelled"] == 2 and new["quality"]["accuracy"] == pytest.approx(0.5)
    assert (old["compared"], old["agreed"], old["agreement"]) == (1, 1, 1.0)


def test_the_current_shadow_is_the_one_the_serving_pointer_names(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    assert client.app.state.services.serving.pointer.set_shadow("v7")  # type: ignore[attr-defined]
    # Named, with no answer logged yet.
    assert monitoring(client, admin_headers)["shadow"] == {"current": "v7", "versions": []}


def test_recent_predictions_come_newest_first_with_their_feedback(
    client: TestClient, admin_headers: dict[str, str], iris_log: dict[str, float]
) -> None:
    recent = monitoring(client, admin_headers, limit=3)["recent"]
    assert [r["prediction_id"] for r in recent] == ["r5", "r4", "r3"]
    r5, r4, r3 = recent
    assert r5["time"] == iso(SECOND + 20) and r5["model_version"] == "v1" and r5["username"] == "alice"
    assert r5["input"] == {"petal_length": 10, "sepal_length": 5.0}
    assert r5["answer"] == {"label": "setosa"}
    assert r5["true_label"] == "setosa" and unix(r5["labelled_at"]) == pytest.approx(iris_log["labelled_at"])
    assert r4["true_label"] == "versicolor"
    assert r3["true_label"] is None and r3["labelled_at"] is None and r3["true_value"] is None


def test_the_window_leaves_out_older_rows(
    client: TestClient, admin_headers: dict[str, str], iris_log: dict[str, float]
) -> None:
    report = monitoring(client, admin_headers, hours=1)
    assert report["hours"] == 1
    assert report["quality"]["hourly"] == [] and report["quality"]["versions"] == []
    assert report["drift"]["rows"] == 0
    assert report["shadow"] == {"current": None, "versions": []}
    # The recent table is the newest rows, whatever the window.
    assert len(report["recent"]) == 6


def test_an_empty_log_answers_empty_sections(client: TestClient, admin_headers: dict[str, str]) -> None:
    report = monitoring(client, admin_headers)
    assert report["serving_version"] == "v1" and report["task"] == "classification"
    assert report["prediction_log_sample"] == 1.0
    assert report["quality"]["hourly"] == [] and report["recent"] == []
    assert report["drift"]["rows"] == 0 and len(report["drift"]["features"]) == 4
    assert report["shadow"] == {"current": None, "versions": []}


def test_a_prediction_and_its_feedback_show_up(client: TestClient, admin_headers: dict[str, str]) -> None:
    answer = client.post("/predict", json={"instances": [IRIS_ROW]}, headers=admin_headers).json()
    prediction = answer["predictions"][0]
    sent = {"items": [{"prediction_id": prediction["prediction_id"], "label": "setosa"}]}
    assert client.post("/feedback", json=sent, headers=admin_headers).json()["recorded"] == 1

    report = monitoring(client, admin_headers)
    (row,) = report["recent"]
    assert row["prediction_id"] == prediction["prediction_id"]
    assert row["input"] == IRIS_ROW and row["answer"]["label"] == prediction["label"]
    assert row["true_label"] == "setosa"
    (hour,) = report["quality"]["hourly"]
    assert hour["labelled"] == 1 and hour["accuracy"] == (1.0 if prediction["label"] == "setosa" else 0.0)
    assert hour["expected_accuracy"] == pytest.approx(max(prediction["probabilities"].values()), abs=1e-6)
    assert report["drift"]["rows"] == 1


@pytest.fixture
def regression_client(
    settings_factory: Callable[..., Settings], colors_model_dir: Path
) -> Iterator[TestClient]:
    with TestClient(create_app(settings_factory(model_dir=colors_model_dir, live_mae_max=2.0))) as client:
        yield client


def test_a_regression_reports_mae_rmse_categorical_drift_and_value_differences(
    regression_client: TestClient,
) -> None:
    store = store_of(regression_client)
    store.insert(
        [
            logged("a", FIRST + 1, value=10.0, color="red", size=2.0),
            logged("b", FIRST + 2, value=5.0, color="red", size=None),
            logged("c", FIRST + 3, value=7.0, color="purple", size=3.0),
        ],
        [
            shadowed("a", "s", FIRST + 5, value=11.0),
            shadowed("b", "s", FIRST + 6, value=2.0),
            shadowed("c", "s", FIRST + 7, value=7.05),  # within 1%: the same answer
        ],
    )
    store.label([Truth("a", value=12.0), Truth("b", value=4.0)], at=NOW)
    headers = bearer(get_token(regression_client, *ADMIN))
    report = monitoring(regression_client, headers)
    assert report["task"] == "regression"

    (hour,) = report["quality"]["hourly"]
    # Errors -2 and +1.
    assert (hour["predictions"], hour["labelled"]) == (3, 2)
    assert hour["mae"] == pytest.approx(1.5) and hour["rmse"] == pytest.approx(math.sqrt(2.5))
    assert hour["accuracy"] is None and hour["expected_accuracy"] is None
    assert report["quality"]["thresholds"]["mae_max"] == 2.0

    color = {f["feature"]: f for f in report["drift"]["features"]}["color"]
    assert color["bins"] == ["blue", "green", "red", "(other)"]
    assert color["recent"] == pytest.approx([0, 0, 2 / 3, 1 / 3])
    assert color["training"][-1] == 0.0  # training saw no other colour

    (shadow,) = report["shadow"]["versions"]
    assert (shadow["compared"], shadow["agreed"]) == (3, 1)
    assert shadow["agreement"] == pytest.approx(1 / 3)
    assert shadow["mean_absolute_difference"] == pytest.approx((1 + 3 + 0.05) / 3)
    # Its own errors: -1 and -2.
    assert shadow["quality"]["mae"] == pytest.approx(1.5)


def test_without_a_reference_profile_drift_says_why(
    settings_factory: Callable[..., Settings], model_dir: Path
) -> None:
    (model_dir / REFERENCE_PROFILE_FILE).unlink()
    with TestClient(create_app(settings_factory())) as client:
        headers = bearer(get_token(client, *ADMIN))
        drift = monitoring(client, headers)["drift"]
        info = client.get("/model-info", headers=headers).json()
    assert (
        drift["features"] == []
        and drift["unavailable"] == f"version v1 has no readable {REFERENCE_PROFILE_FILE}"
    )
    # /model-info says so too, in the same words (an imported version without a labelled sample).
    assert info["drift"] == f"off: version v1 has no readable {REFERENCE_PROFILE_FILE}"


@pytest.mark.parametrize(
    ("overrides", "drift"),
    [({}, "on"), ({"drift_enabled": False}, "off: DRIFT_ENABLED or METRICS_ENABLED is false")],
)
def test_model_info_says_whether_drift_is_measured(
    settings_factory: Callable[..., Settings], overrides: dict[str, object], drift: str
) -> None:
    with TestClient(create_app(settings_factory(**overrides))) as client:
        info = client.get("/model-info", headers=bearer(get_token(client, *ADMIN))).json()
    assert info["drift"] == drift


def test_only_admins_read_it(client: TestClient, user_headers: dict[str, str]) -> None:
    assert client.get("/monitoring").status_code == 401
    bad = client.get("/monitoring", headers=bearer("not.a.token"))
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    refused = client.get("/monitoring", headers=user_headers)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    # A labeller's token (feedback scope) sends ground truth; it does not read the log.
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        crud.create_user(session, "labeller", USER[1], scopes=["feedback"])
    labeller = bearer(get_token(client, "labeller", USER[1]))
    assert client.get("/monitoring", headers=labeller).status_code == 403
    # An admin's token narrowed to `predict` is not an admin's.
    narrowed = bearer(get_token(client, *ADMIN, scope="predict"))
    assert client.get("/monitoring", headers=narrowed).status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"hours": 0}, "hours"),
        ({"hours": 24 * 31 + 1}, "hours"),
        ({"hours": "a day"}, "hours"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": 2.5}, "limit"),
    ],
)
def test_bad_parameters_are_a_422_naming_them(
    client: TestClient, admin_headers: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = client.get("/monitoring", params=params, headers=admin_headers)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", field]
