from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.answers import ID
from tests.support.models import COLOR_ROW, IRIS_FEATURES, IRIS_ROW
from tests.support.tokens import ADMIN, bearer, get_token

HEADER = ",".join(IRIS_FEATURES)
Headers = dict[str, str]


def test_predict_one_row(client: TestClient, user_headers: Headers) -> None:
    response = client.post("/predict", json={"instances": [IRIS_ROW]}, headers=user_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "v1"
    [prediction] = body["predictions"]
    assert prediction["label"] == "setosa"
    assert set(prediction["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_predict_a_batch_up_to_max_batch_rows(client: TestClient, user_headers: Headers) -> None:
    virginica = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.8, "petal_width": 2.3}
    rows = [IRIS_ROW, virginica] * 2 + [IRIS_ROW]
    response = client.post("/predict", json={"instances": rows}, headers=user_headers)
    assert response.status_code == 200
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == ["setosa", "virginica", "setosa", "virginica", "setosa"]


def test_the_model_is_called_once_per_request(client: TestClient, user_headers: Headers) -> None:
    predictor = client.app.state.services.serving.current  # type: ignore[attr-defined]
    calls: list[int] = []
    original = predictor.model
    counting = dataclasses.replace(original, call=lambda x: calls.append(len(x)) or original.call(x))
    object.__setattr__(predictor, "model", counting)
    try:
        client.post("/predict", json={"instances": [IRIS_ROW] * 5}, headers=user_headers)
    finally:
        object.__setattr__(predictor, "model", original)
    assert calls == [5]


def _errors(response) -> list[dict]:
    assert response.status_code == 422, response.text
    return response.json()["detail"]


@pytest.mark.parametrize(
    ("row", "field", "error_type"),
    [
        ({**IRIS_ROW, "colour": "red"}, "colour", "extra_forbidden"),
        ({k: v for k, v in IRIS_ROW.items() if k != "petal_width"}, "petal_width", "missing"),
        ({**IRIS_ROW, "sepal_width": "wide"}, "sepal_width", "float_parsing"),
        # A gap where training had none: the validator's words, as /predict/csv and V2 say it.
        ({**IRIS_ROW, "sepal_width": None}, "sepal_width", "missing_value"),
        ({**IRIS_ROW, "petal_length": [1.0]}, "petal_length", "float_type"),
    ],
)
def test_each_invalid_field_is_named_with_its_row(
    client: TestClient, user_headers: Headers, row: dict, field: str, error_type: str
) -> None:
    [error] = _errors(client.post("/predict", json={"instances": [IRIS_ROW, row]}, headers=user_headers))
    assert (error["row"], error["field"], error["type"]) == (1, field, error_type)
    assert error["loc"] == ["instances", 1, field]
    assert "input" not in error


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinities_are_rejected(client: TestClient, user_headers: Headers, literal: str) -> None:
    row = '{"sepal_length": LITERAL, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
    body = '{"instances": [' + row.replace("LITERAL", literal) + "]}"
    headers = user_headers | {"Content-Type": "application/json"}
    [error] = _errors(client.post("/predict", content=body, headers=headers))
    assert error["row"] == 0 and error["field"] == "sepal_length"


def test_extreme_finite_floats_get_422_naming_the_row_never_500(
    client: TestClient, user_headers: Headers
) -> None:
    # A fuzzer's batch: valid JSON floats at the edges of float64. Once a 500 (NaN probabilities
    # that the JSON encoder refused); now the whole request is refused, naming the bad row.
    body = (
        '{"instances": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},'
        ' {"sepal_length": 5.1, "sepal_width": 1.7976931348623157e+308, "petal_length": -5e-324,'
        ' "petal_width": 0.2}]}'
    )
    response = client.post(
        "/predict", content=body, headers=user_headers | {"Content-Type": "application/json"}
    )
    [error] = _errors(response)
    assert (error["row"], error["field"], error["type"]) == (1, "sepal_width", "no_finite_answer")
    assert "far outside the training range" in error["msg"]
    # The CSV route names the line too.
    text = _csv(HEADER, "5.1,3.5,1.4,0.2", "5.1,1.7976931348623157e+308,-5e-324,0.2")
    response = client.post("/predict/csv", files={"file": ("rows.csv", text)}, headers=user_headers)
    [error] = _errors(response)
    assert (error["row"], error["line"], error["field"]) == (1, 3, "sepal_width")


def test_nan_as_a_string_is_rejected_too(client: TestClient, user_headers: Headers) -> None:
    response = client.post(
        "/predict", json={"instances": [{**IRIS_ROW, "petal_width": "nan"}]}, headers=user_headers
    )
    assert _errors(response)[0]["field"] == "petal_width"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"instances": []}, "too_short"),
        ({"instances": [IRIS_ROW] * 6}, "too_long"),
        ({"rows": [IRIS_ROW]}, "missing"),
        ({"instances": [IRIS_ROW], "debug": True}, "extra_forbidden"),
        ({"instances": "all of them"}, "list_type"),
    ],
)
def test_batch_shape_errors(client: TestClient, user_headers: Headers, body: dict, problem: str) -> None:
    errors = _errors(client.post("/predict", json=body, headers=user_headers))
    assert problem in {e["type"] for e in errors}


def test_a_body_that_is_not_json_is_422(client: TestClient, user_headers: Headers) -> None:
    headers = user_headers | {"Content-Type": "application/json"}
    [error] = _errors(client.post("/predict", content=b"{not json", headers=headers))
    assert error["type"] == "json_invalid"


@pytest.fixture
def colors_client(settings_factory, colors_model_dir: Path):
    with TestClient(create_app(settings_factory(model_dir=colors_model_dir))) as client:
        yield client, bearer(get_token(client, *ADMIN))


def test_categorical_model_accepts_known_categories_and_missing_values(colors_client) -> None:
    client, headers = colors_client
    rows = [COLOR_ROW, {"color": "blue", "size": None}]
    response = client.post("/predict", json={"instances": rows}, headers=headers)
    assert response.status_code == 200, response.text
    values = [p["value"] for p in response.json()["predictions"]]
    assert values[0] == pytest.approx(9, abs=1.5)
    assert all(isinstance(v, float) for v in values)


def test_categorical_model_rejects_unknown_categories_naming_them(colors_client) -> None:
    client, headers = colors_client
    response = client.post("/predict", json={"instances": [{"color": "purple", "size": 1}]}, headers=headers)
    [error] = _errors(response)
    assert (error["row"], error["field"], error["type"]) == (0, "color", "literal_error")
    assert "'blue'" in error["msg"] and "'red'" in error["msg"]
    # A category may not be null when training never saw a missing one.
    response = client.post("/predict", json={"instances": [{"color": None, "size": 1}]}, headers=headers)
    assert _errors(response)[0]["field"] == "color"


def test_openapi_documents_the_generated_request_model(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    instance = schemas["Instance"]
    assert list(instance["properties"]) == IRIS_FEATURES
    assert instance["additionalProperties"] is False
    assert schemas["PredictRequest"]["properties"]["instances"]["maxItems"] == 5


# --- CSV ---------------------------------------------------------------------------------------


def _csv(*lines: str) -> str:
    return "\n".join(lines) + "\n"


GOOD_CSV = _csv(HEADER, "5.1,3.5,1.4,0.2", "6.9,3.1,5.8,2.3")


def test_csv_upload_answers_json(client: TestClient, user_headers: Headers) -> None:
    response = client.post("/predict/csv", files={"file": ("rows.csv", GOOD_CSV)}, headers=user_headers)
    assert response.status_code == 200, response.text
    assert [p["label"] for p in response.json()["predictions"]] == ["setosa", "virginica"]


def test_csv_upload_answers_csv_when_asked(client: TestClient, user_headers: Headers) -> None:
    headers = user_headers | {"Accept": "text/csv"}
    response = client.post("/predict/csv", files={"file": ("rows.csv", GOOD_CSV)}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["label"] for r in rows] == ["setosa", "virginica"]
    assert rows[0]["sepal_length"] == "5.1"
    assert float(rows[0]["proba_setosa"]) > 0.5
    assert list(rows[0]) == [
        *IRIS_FEATURES, "prediction_id", "label", "proba_setosa", "proba_versicolor", "proba_virginica"
    ]  # fmt: skip
    assert all(ID.match(r["prediction_id"]) for r in rows)


def test_csv_body_with_columns_in_any_order(client: TestClient, user_headers: Headers) -> None:
    text = _csv("petal_width,petal_length,sepal_width,sepal_length", "0.2,1.4,3.5,5.1")
    headers = user_headers | {"Content-Type": "text/csv"}
    response = client.post("/predict/csv", content=text, headers=headers)
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "setosa"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_csv(HEADER, "5.1,3.5,1.4,0.2", "5.1,3.5,1.4"), "line 3: expected 4 fields, found 3"),
        (
            _csv("sepal_length,sepal_width,petal_length", "5.1,3.5,1.4"),
            "line 1: missing column(s) petal_width",
        ),
        (_csv(HEADER + ",colour", "5.1,3.5,1.4,0.2,red"), "line 1: unexpected column(s) colour"),
        (_csv(HEADER, '5.1,3.5,"1.4,0.2'), "line 2: malformed CSV"),
        (_csv(HEADER), "the CSV has a header but no rows"),
        ("", "line 1: the CSV is empty"),
    ],
)
def test_malformed_csv_gets_422_naming_the_line(
    client: TestClient, user_headers: Headers, text: str, expected: str
) -> None:
    response = client.post("/predict/csv", files={"file": ("rows.csv", text)}, headers=user_headers)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(expected), response.json()


def test_csv_values_are_validated_with_their_line(client: TestClient, user_headers: Headers) -> None:
    text = _csv(HEADER, "5.1,3.5,1.4,0.2", "", "5.1,abc,1.4,inf")
    response = client.post("/predict/csv", files={"file": ("rows.csv", text)}, headers=user_headers)
    errors = _errors(response)
    assert [(e["line"], e["row"], e["field"]) for e in errors] == [
        (4, 1, "sepal_width"),
        (4, 1, "petal_width"),
    ]


def test_csv_that_is_not_utf8_is_422(client: TestClient, user_headers: Headers) -> None:
    data = (HEADER + "\n5.1,3.5,1.4,0.2\n").encode() + b"\xff\xfe"
    response = client.post("/predict/csv", files={"file": ("rows.csv", data)}, headers=user_headers)
    assert response.status_code == 422
    assert "UTF-8" in response.json()["detail"]


def test_csv_for_a_categorical_model(colors_client) -> None:
    client, headers = colors_client
    text = _csv("color,size", "red,2", "green,", "purple,1")
    response = client.post("/predict/csv", files={"file": ("rows.csv", text)}, headers=headers)
    [error] = _errors(response)
    assert (error["line"], error["field"]) == (4, "color")
    ok = client.post(
        "/predict/csv",
        files={"file": ("rows.csv", _csv("color,size", "red,2", "green,"))},
        headers=headers | {"Accept": "text/csv"},
    )
    assert ok.status_code == 200
    rows = list(csv.DictReader(io.StringIO(ok.text)))
    assert [r["color"] for r in rows] == ["red", "green"] and rows[1]["size"] == ""
    assert float(rows[0]["prediction"]) == pytest.approx(9, abs=1.5)
