"""The shadow challenger through the API: answers unchanged, agreement counted, its answers logged,
every replica following it, and promotion refused or accepted on live evidence."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sklearn.datasets import load_iris

from app.adapters.model_store import ModelStore
from app.core.config import Settings
from app.core.versions import VersionRecord, now
from app.db.prediction_log import Truth
from app.main import create_app
from tests.support.answers import masked
from tests.support.models import IRIS_FEATURES, write_model
from tests.support.tokens import ADMIN, bearer, get_token

Headers = dict[str, str]

_IRIS = load_iris()
IRIS_ROWS = [dict(zip(IRIS_FEATURES, map(float, row), strict=True)) for row in _IRIS.data]
IRIS_TRUTH = [str(_IRIS.target_names[i]) for i in _IRIS.target]


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    # The whole iris set in one request; the pointer re-read often, for the second replica.
    return settings_factory(max_batch_rows=200, watch_seconds=0.2)


@pytest.fixture
def challenger(settings: Settings, tmp_path: Path) -> str:
    """v2 in the store: a decision tree (100% on iris, where v1's logistic regression has 97%)."""
    folder = tmp_path / "challenger"
    write_model(folder, "iris", version="v2", candidate="decision_tree")
    store = ModelStore.from_url(settings.model_store_url, settings.model_cache_dir)
    store.publish(folder, VersionRecord(origin="pipeline", recorded_at=now()))
    return "v2"


def shadow_rows(version: str, result: str) -> float:
    labels = {"model_version": version, "result": result}
    return REGISTRY.get_sample_value("predictor_shadow_rows_total", labels) or 0.0


def predict(client: TestClient, headers: Headers, rows: list[dict[str, float]]) -> Any:
    answer = client.post("/predict", json={"instances": rows}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


def drained(client: TestClient) -> None:
    """What the shadow was offered is scored, and what both logged is written."""
    state = client.app.state.services  # type: ignore[attr-defined]
    if state.serving.shadow is not None:
        assert state.serving.shadow.flush()
    assert state.prediction_log.flush()


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_shadow_scores_the_traffic_and_never_changes_an_answer(
    client: TestClient, admin_headers: Headers, user_headers: Headers, challenger: str
) -> None:
    rows = IRIS_ROWS[45:105]  # across all three classes, where the two models disagree on some
    alone = predict(client, user_headers, rows)
    started = client.post("/model/shadow", json={"version": challenger}, headers=admin_headers)
    assert started.status_code == 200, started.text
    assert started.json() == {"shadow": "v2", "model_version": "v1"}
    before = {r: shadow_rows("v2", r) for r in ("agreed", "disagreed", "dropped", "failed")}

    beside = predict(client, user_headers, rows)
    assert masked(beside.text) == masked(alone.text)  # byte for byte, but for the random ids
    assert beside.headers["content-type"] == alone.headers["content-type"]
    drained(client)

    agreed = shadow_rows("v2", "agreed") - before["agreed"]
    disagreed = shadow_rows("v2", "disagreed") - before["disagreed"]
    assert agreed + disagreed == len(rows) and agreed > disagreed > 0
    assert shadow_rows("v2", "dropped") == before["dropped"]
    assert shadow_rows("v2", "failed") == before["failed"]
    # Its answers to the logged rows are kept, by the ids the champion's answer gave.
    ids = [p["prediction_id"] for p in beside.json()["predictions"]]
    store = client.app.state.services.predictions  # type: ignore[attr-defined]
    logged = {
        r.logged.prediction_id: r.logged.shadow_label
        for r in store.recent(500)
        if r.logged.shadow_version == "v2"
    }
    assert sorted(logged) == sorted(ids)
    assert set(logged.values()) == {"setosa", "versicolor", "virginica"}
    (agreement,) = [a for a in store.shadow_agreement(0, 0.01) if a.version == "v2"]
    assert (agreement.compared, agreement.agreed) == (len(rows), agreed)

    listing = client.get("/models", headers=user_headers).json()
    assert (listing["serving"], listing["shadow"]) == ("v1", "v2")
    assert {v["version"]: (v["serving"], v["shadow"]) for v in listing["versions"]} == {
        "v1": (True, False),
        "v2": (False, True),
    }

    stopped = client.request("DELETE", "/model/shadow", headers=admin_headers)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"shadow": None, "stopped": "v2"}
    counted = shadow_rows("v2", "agreed") + shadow_rows("v2", "disagreed")
    assert masked(predict(client, user_headers, rows).text) == masked(alone.text)
    drained(client)
    assert shadow_rows("v2", "agreed") + shadow_rows("v2", "disagreed") == counted
    assert client.get("/models", headers=user_headers).json()["shadow"] is None
    # Stopping none is no error: nothing was shadowing.
    again = client.request("DELETE", "/model/shadow", headers=admin_headers)
    assert (again.status_code, again.json()) == (200, {"shadow": None, "stopped": None})


def test_shadow_refusals(
    client: TestClient,
    admin_headers: Headers,
    user_headers: Headers,
    challenger: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    def start(payload: object, headers: Headers = admin_headers) -> tuple[int, Any]:
        answer = client.post("/model/shadow", json=payload, headers=headers)
        return answer.status_code, answer.json()["detail"]

    assert start({"version": "2020-01-01T00-00-00"}) == (404, "unknown model version '2020-01-01T00-00-00'")
    assert start({"version": "../../etc"})[0] == 404
    status, detail = start({"version": "v1"})
    assert (status, detail) == (
        409,
        "shadow refused: version v1 is the champion: a shadow is another version",
    )
    assert start({})[0] == 422
    assert start({"version": ""})[0] == 422
    assert start({"version": "v2", "force": True})[0] == 422
    assert start({"version": "v2"}, user_headers)[0] == 403
    assert client.post("/model/shadow", json={"version": "v2"}).status_code == 401
    assert client.request("DELETE", "/model/shadow", headers=user_headers).status_code == 403

    colors = tmp_path / "colors"
    write_model(colors, "colors", version="colors-v1")
    ModelStore.from_url(settings.model_store_url, settings.model_cache_dir).publish(
        colors, VersionRecord(origin="pipeline", recorded_at=now())
    )
    status, detail = start({"version": "colors-v1"})
    assert status == 409 and "regression model" in detail
    assert client.get("/models", headers=user_headers).json()["shadow"] is None


def test_every_replica_follows_the_shadow_and_a_change_of_champion_keeps_it(
    client: TestClient,
    admin_headers: Headers,
    user_headers: Headers,
    challenger: str,
    settings: Settings,
    model_dir: Path,
) -> None:
    with TestClient(create_app(settings)) as second:
        second_headers = bearer(get_token(second, *ADMIN))

        def second_shadow() -> str | None:
            return second.get("/models", headers=second_headers).json()["shadow"]

        assert second_shadow() is None
        assert (
            client.post("/model/shadow", json={"version": challenger}, headers=admin_headers).status_code
            == 200
        )
        assert eventually(lambda: second_shadow() == "v2")
        # The second replica's traffic is scored by its own copy of the shadow.
        before = shadow_rows("v2", "agreed") + shadow_rows("v2", "disagreed")
        predict(second, second_headers, IRIS_ROWS[:3])
        drained(second)
        assert shadow_rows("v2", "agreed") + shadow_rows("v2", "disagreed") == before + 3

        # A new champion (the pipeline's v3, reloaded) leaves the shadow where it was.
        write_model(model_dir, "iris", version="v3")
        assert client.post("/model/reload", headers=admin_headers).status_code == 200
        pointer = client.app.state.services.serving.pointer.get()  # type: ignore[attr-defined]
        assert (pointer.version, pointer.shadow_version) == ("v3", "v2")
        assert eventually(lambda: second.get("/health").json()["model_version"] == "v3")
        assert second_shadow() == "v2"

        # A replica starting now loads it at start-up, before any watch tick.
        with TestClient(create_app(settings.model_copy(update={"watch_seconds": 3600}))) as third:
            third_headers = bearer(get_token(third, *ADMIN))
            assert eventually(lambda: third.get("/models", headers=third_headers).json()["shadow"] == "v2")

        stopped = second.request("DELETE", "/model/shadow", headers=second_headers)
        assert stopped.json()["stopped"] == "v2"
        assert eventually(lambda: client.get("/models", headers=user_headers).json()["shadow"] is None)


def label(client: TestClient, ids: list[str], labels: list[str]) -> None:
    truths = [Truth(prediction_id=i, label=label) for i, label in zip(ids, labels, strict=True)]
    statuses = client.app.state.services.predictions.label(truths, at=time.time())  # type: ignore[attr-defined]
    assert set(statuses) <= {"recorded", "relabelled"}


def shadowed_iris(
    client: TestClient, admin_headers: Headers, user_headers: Headers
) -> tuple[list[str], list[str]]:
    """The shadow v2 on, the iris set predicted once: the ids, and the champion's labels."""
    assert client.post("/model/shadow", json={"version": "v2"}, headers=admin_headers).status_code == 200
    predictions = predict(client, user_headers, IRIS_ROWS).json()["predictions"]
    drained(client)
    return [p["prediction_id"] for p in predictions], [p["label"] for p in predictions]


def test_promotion_is_refused_without_a_shadow_enough_labels_or_a_metric_as_good(
    client: TestClient, admin_headers: Headers, user_headers: Headers, challenger: str
) -> None:
    def promote() -> tuple[int, Any]:
        answer = client.post("/model/promote", headers=admin_headers)
        return answer.status_code, answer.json()["detail"]

    assert promote() == (409, "no shadow to promote: POST /model/shadow first")
    ids, champion_labels = shadowed_iris(client, admin_headers, user_headers)
    assert client.post("/model/promote", headers=user_headers).status_code == 403

    status, detail = promote()
    assert status == 409
    assert detail["labelled"] == 0 and detail["champion"] is None and detail["shadow"] is None

    label(client, ids[:20], IRIS_TRUTH[:20])  # 20 of PROMOTION_MIN_LABELS' 100
    status, detail = promote()
    assert status == 409
    assert detail["message"].startswith("promotion refused: 20 labelled predictions")
    assert detail | {"message": ""} == {
        "message": "",
        "champion_version": "v1",
        "shadow_version": "v2",
        "metric": "accuracy",
        "champion": 1.0,
        "shadow": 1.0,
        "labelled": 20,
        "min_labels": 100,
        "tolerance": 0.01,
    }

    # Truth as the champion said it: the shadow is right where it agrees only.
    label(client, ids, champion_labels)
    status, detail = promote()
    assert status == 409
    assert detail["labelled"] == 150 and detail["champion"] == 1.0
    assert detail["shadow"] == pytest.approx(146 / 150)  # the four rows where v1 is wrong, v2 right
    assert "is below the champion's 1.0000 minus the tolerance 0.01" in detail["message"]
    assert client.get("/models", headers=user_headers).json()["serving"] == "v1"
    assert client.app.state.services.serving.pointer.get().shadow_version == "v2"  # type: ignore[attr-defined]


def test_promotion_on_live_evidence_serves_the_shadow_everywhere(
    client: TestClient, admin_headers: Headers, user_headers: Headers, challenger: str
) -> None:
    ids, _ = shadowed_iris(client, admin_headers, user_headers)
    label(client, ids, IRIS_TRUTH)  # the tree is right on every one, the regression on 97%

    answer = client.post("/model/promote", headers=admin_headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["previous_version"], body["model_version"]) == ("v1", "v2")
    assert body["evidence"]["metric"] == "accuracy" and body["evidence"]["labelled"] == 150
    assert body["evidence"]["shadow"] == 1.0 and body["evidence"]["champion"] < 0.99
    assert body["mlflow"]["status"] == "skipped"  # the test models were never registered

    pointer = client.app.state.services.serving.pointer.get()  # type: ignore[attr-defined]
    assert (pointer.version, pointer.shadow_version) == ("v2", None)
    assert pointer.reason == "promoted by admin on live evidence"
    listing = client.get("/models", headers=user_headers).json()
    assert (listing["serving"], listing["shadow"]) == ("v2", None)
    assert predict(client, user_headers, IRIS_ROWS[:1]).json()["model_version"] == "v2"
    assert client.post("/model/promote", headers=admin_headers).status_code == 409  # nothing left to promote
