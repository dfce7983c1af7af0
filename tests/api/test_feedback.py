"""Prediction ids on every path, the prediction log (sampling, retention, drops), POST /feedback and
the live quality gauges against a hand-computed window."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sklearn.metrics import accuracy_score, f1_score
from sqlalchemy import select

from app.core.config import Settings
from app.core.prediction_records import RECORD_COLUMNS, LoggedPrediction
from app.db.models import PredictionLogRow
from app.db.prediction_log import PredictionLogStore, Truth
from app.main import create_app
from app.serving.prediction_log import PredictionLog
from app.serving.predictor import Answers
from tests.support.answers import ID
from tests.support.models import IRIS_ROW
from tests.support.tokens import ADMIN, USER, bearer, get_token

ROWS = [
    IRIS_ROW,
    {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
    {"sepal_length": 5.9, "sepal_width": 2.8, "petal_length": 4.3, "petal_width": 1.3},
]


def _predict(client: TestClient, headers: dict[str, str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = client.post("/predict", json={"instances": rows}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _logged(client: TestClient) -> dict[str, LoggedPrediction]:
    """Every logged prediction, decoded from its record."""
    assert client.app.state.services.prediction_log.flush()  # type: ignore[attr-defined]
    store: PredictionLogStore = client.app.state.services.predictions  # type: ignore[attr-defined]
    return {r.logged.prediction_id: r.logged for r in store.recent(10_000)}


def _labelled(client: TestClient) -> dict[str, PredictionLogRow]:
    """The labelled predictions, a row each."""
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        return {row.prediction_id: row for row in session.scalars(select(PredictionLogRow))}


def _feedback(client: TestClient, headers: dict[str, str], items: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/feedback", json={"items": items}, headers=headers)


def test_every_path_answers_unique_ids_and_logs_them(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    ids = [p["prediction_id"] for p in _predict(client, user_headers, ROWS)]
    ids += [p["prediction_id"] for p in _predict(client, user_headers, ROWS[:1])]
    csv_body = "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    as_json = client.post(
        "/predict/csv", content=csv_body, headers=user_headers | {"content-type": "text/csv"}
    )
    ids += [p["prediction_id"] for p in as_json.json()["predictions"]]
    as_csv = client.post(
        "/predict/csv",
        content=csv_body,
        headers=user_headers | {"content-type": "text/csv", "accept": "text/csv"},
    )
    header, *lines = as_csv.text.splitlines()
    assert header.split(",")[4] == "prediction_id"
    ids += [line.split(",")[4] for line in lines]
    as_ndjson = client.post(
        "/predict/csv",
        content=csv_body,
        headers=user_headers | {"content-type": "text/csv", "accept": "application/x-ndjson"},
    )
    ids += [json.loads(line)["prediction_id"] for line in as_ndjson.text.splitlines()]
    v2 = client.post(
        "/v2/models/predictor/infer",
        json={
            "inputs": [
                {"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in IRIS_ROW.items()
            ]
        },
        headers=user_headers,
    )
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["prediction_id"]["datatype"] == "BYTES"
    ids += outputs["prediction_id"]["data"]

    assert len(ids) == 3 + 1 + 2 + 2 + 2 + 1
    assert len(set(ids)) == len(ids), "ids are unique across rows and requests"
    assert all(ID.match(i) for i in ids), ids
    assert len({i.rsplit("-", 1)[0] for i in ids}) == 6, "one random key per request"

    logged = _logged(client)
    assert set(ids) <= logged.keys()
    row = logged[ids[1]]
    assert row.username == USER[0]
    assert row.model_version == client.get("/model-info", headers=user_headers).json()["version"]
    assert row.features == ROWS[1]
    answer = row.answer
    assert answer["label"] == row.predicted_label and row.confidence == max(answer["probabilities"].values())
    # Never a token or a password: only the username.
    stored = " ".join(f"{r.username} {r.features} {r.answer}" for r in logged.values())
    assert USER[1] not in stored and user_headers["Authorization"].split()[1] not in stored


def test_feedback_records_relabels_and_reports_unknown_and_invalid_items(
    client: TestClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    first, second = (p["prediction_id"] for p in _predict(client, user_headers, ROWS[:2]))
    answer = _feedback(
        client,
        admin_headers,
        [
            {"prediction_id": first, "label": "setosa"},
            {"prediction_id": second, "label": "versicolor"},
            {"prediction_id": second, "label": "virginica"},  # the last one wins
            {"prediction_id": "made-up-id-0", "label": "setosa"},
            {"prediction_id": first, "label": "tulip"},
            {"prediction_id": first, "value": 1.5},
        ],
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [i["status"] for i in body["items"]] == [
        "recorded", "recorded", "relabelled", "unknown", "invalid", "invalid"
    ]  # fmt: skip
    assert (body["recorded"], body["relabelled"], body["unknown"], body["invalid"]) == (2, 1, 1, 2)
    assert "tulip" in body["items"][4]["detail"] and "setosa" in body["items"][4]["detail"]
    labelled = _labelled(client)
    assert (labelled[first].true_label, labelled[second].true_label) == ("setosa", "virginica")
    assert json.loads(labelled[second].features) == ROWS[1], "the row decoded from its record"

    again = _feedback(client, admin_headers, [{"prediction_id": first, "label": "versicolor"}]).json()
    assert again["items"][0]["status"] == "relabelled"
    assert _labelled(client)[first].true_label == "versicolor"
    assert REGISTRY.get_sample_value("predictor_feedback_items_total", {"status": "unknown"}) >= 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"items": []},
        {"items": [{"label": "setosa"}]},
        {"items": [{"prediction_id": "", "label": "setosa"}]},
        {"items": [{"prediction_id": "x-0", "label": "setosa", "token": "t"}]},
        {"items": [{"prediction_id": "x-0", "value": "much"}]},
        {"items": [{"prediction_id": f"x-{i}", "label": "setosa"} for i in range(1001)]},
        [{"prediction_id": "x-0", "label": "setosa"}],
    ],
)
def test_a_malformed_feedback_body_is_a_422_that_says_what_is_wrong(
    client: TestClient, admin_headers: dict[str, str], body: Any
) -> None:
    answer = client.post("/feedback", json=body, headers=admin_headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"]


def test_feedback_needs_the_feedback_scope_which_admins_hold(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    items = [{"prediction_id": "x-0", "label": "setosa"}]
    assert _feedback(client, user_headers, items).status_code == 403
    assert client.post("/feedback", json={"items": items}).status_code == 401
    assert "feedback" in client.get("/users", headers=bearer(get_token(client, *ADMIN))).json()[0]["scopes"]


def test_live_gauges_match_a_hand_computed_window(
    client: TestClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    predictions = _predict(client, user_headers, ROWS) + _predict(client, user_headers, ROWS)
    truths = ["setosa", "virginica", "virginica", "setosa", "versicolor", "setosa"]
    items = [
        {"prediction_id": p["prediction_id"], "label": t} for p, t in zip(predictions, truths, strict=True)
    ]
    assert _feedback(client, admin_headers, items[:5]).json()["recorded"] == 5  # the sixth stays unlabelled
    predicted = [p["label"] for p in predictions[:5]]
    version = client.get("/model-info", headers=user_headers).json()["version"]

    found = client.app.state.services.live_quality.refresh()  # type: ignore[attr-defined]
    quality = found[(version, "served")]
    labels = {"model_version": version, "role": "served"}
    assert quality.labelled == 5 == REGISTRY.get_sample_value("predictor_live_labelled", labels)
    assert REGISTRY.get_sample_value("predictor_live_accuracy", labels) == pytest.approx(
        accuracy_score(truths[:5], predicted)
    )
    assert REGISTRY.get_sample_value("predictor_live_macro_f1", labels) == pytest.approx(
        f1_score(truths[:5], predicted, average="macro")
    )
    assert math.isnan(quality.mae)
    assert (
        REGISTRY.get_sample_value("predictor_live_min_labels")
        == client.app.state.services.settings.live_quality_min_labels
    )  # type: ignore[attr-defined]

    # Predictions made before the window are not counted.
    later = client.app.state.services.live_quality  # type: ignore[attr-defined]
    later._clock = lambda: time.time() + later.window_seconds + 60
    assert later.refresh()[(version, "served")].labelled == 0
    assert REGISTRY.get_sample_value("predictor_live_labelled", labels) == 0


def test_the_expected_accuracy_is_the_mean_top_probability(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    predictions = _predict(client, user_headers, ROWS)
    version = client.get("/model-info", headers=user_headers).json()["version"]
    assert "predictor_expected_accuracy" in client.get("/metrics").text
    expected = sum(max(p["probabilities"].values()) for p in predictions) / len(predictions)
    estimate = REGISTRY.get_sample_value("predictor_expected_accuracy", {"model_version": version})
    assert estimate == pytest.approx(expected, abs=1e-6)


def test_sampling_keeps_about_the_share_asked_and_zero_keeps_none(
    settings_factory: Any,
) -> None:
    for sample, low, high in ((0.0, 0, 0), (0.5, 120, 280)):
        settings: Settings = settings_factory(prediction_log_sample=sample)
        with TestClient(create_app(settings)) as client:
            headers = bearer(get_token(client, *ADMIN))
            ids = [p["prediction_id"] for _ in range(80) for p in _predict(client, headers, ROWS + ROWS[:2])]
            if client.app.state.services.prediction_log is not None:  # type: ignore[attr-defined]
                client.app.state.services.prediction_log.flush()  # type: ignore[attr-defined]
            kept = PredictionLogStore(client.app.state.services.database.session).count()  # type: ignore[attr-defined]
            assert low <= kept <= high, (sample, kept)
            if sample == 0:
                status = _feedback(client, headers, [{"prediction_id": ids[0], "label": "setosa"}]).json()
                assert status["items"][0]["status"] == "unknown"


class _SlowSink:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.rows: list[dict[str, Any]] = []
        self.swept: list[float] = []

    def insert_rows(self, rows: Any, shadow_rows: Any = ()) -> None:
        self.release.wait(10)
        self.rows += rows

    def sweep(self, before: float) -> int:
        self.swept.append(before)
        return 0


def _answers(rows: int) -> Answers:
    import numpy as np

    probabilities = np.tile([0.9, 0.05, 0.05], (rows, 1))
    return Answers(("a", "b", "c"), label_index=np.zeros(rows, dtype=np.intp), probabilities=probabilities)


def test_a_full_buffer_drops_and_counts_and_never_blocks(serving_predictor: Any) -> None:
    import numpy as np

    sink = _SlowSink()
    prediction_log = PredictionLog(sink, sample=1, buffer_rows=10, retention_days=30, flush_seconds=0.01)
    stop = prediction_log.start()
    try:
        matrix = np.zeros((4, 4))
        dropped = REGISTRY.get_sample_value("predictor_prediction_log_rows_total", {"result": "buffer_full"})
        started = time.perf_counter()
        prediction_log.record(serving_predictor, "u", matrix, _answers(4), ["k-0", "k-1", "k-2", "k-3"])
        time.sleep(0.1)  # the writer took the first batch and is stuck in the sink
        for i in range(4):  # 4 rows each: two fit, the others find it full
            prediction_log.record(
                serving_predictor, "u", matrix, _answers(4), [f"b{i}-{j}" for j in range(4)]
            )
        assert time.perf_counter() - started < 0.5, "recording never waits for the database"
        after = REGISTRY.get_sample_value("predictor_prediction_log_rows_total", {"result": "buffer_full"})
        assert after - dropped == 8
        sink.release.set()
        assert prediction_log.flush()
        assert sum(record[RECORD_COLUMNS.index("logged")] for record in sink.rows) == 4 + 8
        assert sink.swept and sink.swept[0] < time.time() - 29 * 86400
    finally:
        sink.release.set()
        stop()


def test_the_sweep_deletes_rows_past_the_retention(client: TestClient, user_headers: dict[str, str]) -> None:
    _predict(client, user_headers, ROWS)
    store: PredictionLogStore = client.app.state.services.predictions  # type: ignore[attr-defined]
    prediction_log: PredictionLog = client.app.state.services.prediction_log  # type: ignore[attr-defined]
    prediction_log.flush()
    assert store.count() == 3
    prediction_log.sweep()
    assert store.count() == 3, "nothing is older than PREDICTION_LOG_DAYS yet"
    prediction_log._clock = lambda: time.time() + 31 * 86400
    prediction_log.sweep()
    assert store.count() == 0


def test_a_failing_database_drops_the_batch_and_counts_it(serving_predictor: Any) -> None:
    import numpy as np

    class Broken:
        def insert_rows(self, rows: Any, shadow_rows: Any = ()) -> None:
            raise OSError("database down")

        def sweep(self, before: float) -> int:
            return 0

    prediction_log = PredictionLog(Broken(), sample=1, buffer_rows=100, retention_days=30, flush_seconds=0.01)
    stop = prediction_log.start()
    try:
        before = REGISTRY.get_sample_value("predictor_prediction_log_rows_total", {"result": "write_failed"})
        prediction_log.record(serving_predictor, "u", np.zeros((2, 4)), _answers(2), ["k-0", "k-1"])
        assert prediction_log.flush()
        after = REGISTRY.get_sample_value("predictor_prediction_log_rows_total", {"result": "write_failed"})
        assert after - before == 2
    finally:
        stop()


@pytest.fixture
def serving_predictor(client: TestClient) -> Any:
    return client.app.state.services.serving.current  # type: ignore[attr-defined]


def test_a_shadow_answer_lands_in_its_record_in_the_same_flush_or_a_later_one(
    client: TestClient, serving_predictor: Any
) -> None:
    import numpy as np

    store: PredictionLogStore = client.app.state.services.predictions  # type: ignore[attr-defined]
    prediction_log = PredictionLog(store, sample=1, buffer_rows=100, retention_days=30, flush_seconds=60)
    stop = prediction_log.start()
    try:
        prediction_log.record(serving_predictor, "u", np.zeros((2, 4)), _answers(2), ["a-0", "a-1"])
        prediction_log.record_shadow("v9", "a-0", _answers(2), 2, None)  # the same flush
        assert prediction_log.flush()
        prediction_log.record(serving_predictor, "u", np.zeros((1, 4)), _answers(1), ["b-0"])
        assert prediction_log.flush()
        prediction_log.record_shadow("v9", "b-0", _answers(1), 0, None)  # after its record was written
        assert prediction_log.flush()
        # Feedback before the shadow's answer: the labelled row gets it when it comes.
        prediction_log.record(serving_predictor, "u", np.zeros((1, 4)), _answers(1), ["c-0"])
        assert prediction_log.flush()
        assert store.label([Truth("c-0", label="a")], at=time.time()) == ["recorded"]
        prediction_log.record_shadow("v9", "c-0", _answers(1), 1, None)
        assert prediction_log.flush()
    finally:
        stop()
    found = {
        r.logged.prediction_id: (r.logged.shadow_version, r.logged.shadow_label) for r in store.recent(10)
    }
    assert found == {"a-0": ("v9", "a"), "a-1": ("v9", "a"), "b-0": ("v9", "a"), "c-0": ("v9", "a")}
    (agreement,) = store.shadow_agreement(0, 0.01)
    assert (agreement.version, agreement.compared, agreement.agreed) == ("v9", 4, 3)
    assert _labelled(client)["c-0"].shadow_version == "v9"
