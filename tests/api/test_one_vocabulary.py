"""The same bad row says the same thing through every protocol: /predict's 422 `detail` item, the
item of /predict/csv's 422 (which also names the CSV line), and V2's `{"error": ...}` sentence are
the validator's one wording (app.serving.validation), each in its protocol's envelope."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.validation import sentence
from tests.support.models import IRIS_FEATURES
from tests.support.tokens import ADMIN, bearer, get_token

INFER = "/v2/models/predictor/infer"
GOOD = [5.1, 3.5, 1.4, 0.2]
Headers = dict[str, str]


def _predict(client: TestClient, headers: Headers, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Written by hand: json.dumps would write infinity as the non-standard `Infinity`, not as 1e999.
    body = json.dumps({"instances": rows}).replace("Infinity", "1e999")
    response = client.post("/predict", content=body, headers=headers | {"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    return response.json()["detail"]


def _csv(client: TestClient, headers: Headers, header: list[str], lines: list[str]) -> list[dict[str, Any]]:
    text = "\n".join([",".join(header), *lines]) + "\n"
    response = client.post("/predict/csv", files={"file": ("rows.csv", text)}, headers=headers)
    assert response.status_code == 422, response.text
    return response.json()["detail"]


def _v2(client: TestClient, headers: Headers, inputs: list[dict[str, Any]], status: int = 422) -> str:
    body = json.dumps({"inputs": inputs}).replace("Infinity", "1e999")
    response = client.post(INFER, content=body, headers=headers | {"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    return response.json()["error"]


def _iris_rows(bad: str, value: Any) -> list[dict[str, Any]]:
    return [
        dict(zip(IRIS_FEATURES, GOOD, strict=True)),
        {**dict(zip(IRIS_FEATURES, GOOD, strict=True)), bad: value},
    ]


def _iris_tensors(bad: str, value: Any, datatype: str = "FP64") -> list[dict[str, Any]]:
    columns = {name: [v, v] for name, v in zip(IRIS_FEATURES, GOOD, strict=True)}
    columns[bad] = [columns[bad][0], value]
    return [
        {"name": n, "shape": [2], "datatype": datatype if n == bad else "FP64", "data": d}
        for n, d in columns.items()
    ]


def _same_words(json_item: dict[str, Any], csv_item: dict[str, Any], v2_error: str | None) -> None:
    keys = ("loc", "msg", "type", "row", "field")
    assert {k: json_item[k] for k in keys} == {k: csv_item[k] for k in keys}
    assert csv_item["line"] == csv_item["row"] + 2  # the header is line 1
    if v2_error is not None:
        assert v2_error == sentence(json_item)


@pytest.mark.parametrize(
    ("case", "cell", "json_value", "v2_value"),
    [
        ("non-finite", "1e999", float("inf"), float("inf")),
        ("missing where training had none", "", None, None),
    ],
)
def test_a_bad_number_reads_the_same_everywhere(
    client: TestClient, user_headers: Headers, case: str, cell: str, json_value: Any, v2_value: Any
) -> None:
    [json_item] = _predict(client, user_headers, _iris_rows("sepal_width", json_value))
    [csv_item] = _csv(client, user_headers, IRIS_FEATURES, ["5.1,3.5,1.4,0.2", f"5.1,{cell},1.4,0.2"])
    v2_error = _v2(client, user_headers, _iris_tensors("sepal_width", v2_value))
    assert (json_item["row"], json_item["field"]) == (1, "sepal_width"), case
    assert "expected" in json_item["msg"]  # what is wrong, then what was expected
    _same_words(json_item, csv_item, v2_error)


def test_a_wrong_type_reads_the_same_in_json_and_csv(client: TestClient, user_headers: Headers) -> None:
    [json_item] = _predict(client, user_headers, _iris_rows("sepal_width", "abc"))
    [csv_item] = _csv(client, user_headers, IRIS_FEATURES, ["5.1,3.5,1.4,0.2", "5.1,abc,1.4,0.2"])
    _same_words(json_item, csv_item, None)
    assert json_item["type"] == "float_parsing"
    # V2 types its tensors: a string in an FP64 tensor does not fit the protocol (400), naming the input.
    error = _v2(client, user_headers, _iris_tensors("sepal_width", "abc"), status=400)
    assert error == "input 'sepal_width' is FP64: its data must be numbers (or null)"


def test_a_body_with_a_wrong_type_still_names_every_bad_value(
    client: TestClient, user_headers: Headers
) -> None:
    """pydantic answers for a cell of the wrong type; the validator's words for the other cells come
    in the same 422, in row and feature order, as the CSV's answer names both too."""
    row = dict(zip(IRIS_FEATURES, GOOD, strict=True))
    rows = [{**row, "petal_width": None}, {**row, "sepal_width": "abc", "petal_length": float("inf")}]
    found = _predict(client, user_headers, rows)
    assert [(e["row"], e["field"], e["type"]) for e in found] == [
        (0, "petal_width", "missing_value"),
        (1, "sepal_width", "float_parsing"),
        (1, "petal_length", "finite_number"),
    ]
    csv = _csv(client, user_headers, IRIS_FEATURES, ["5.1,3.5,1.4,", "5.1,abc,1e999,0.2"])
    for json_item, csv_item in zip(found, csv, strict=True):
        _same_words(json_item, csv_item, None)


def test_a_too_large_batch_reads_the_same_in_json_and_v2(client: TestClient, user_headers: Headers) -> None:
    rows = [dict(zip(IRIS_FEATURES, GOOD, strict=True))] * 6  # MAX_BATCH_ROWS is 5 here
    [json_item] = _predict(client, user_headers, rows)
    tensors = [{"name": "input-0", "shape": [6, 4], "datatype": "FP64", "data": GOOD * 6}]
    assert json_item["type"] == "too_long" and json_item["loc"] == ["instances"]
    assert _v2(client, user_headers, tensors) == sentence(json_item)
    # A CSV has no batch limit: its chunks are scored whatever the file's size.
    text = "\n".join([",".join(IRIS_FEATURES), *["5.1,3.5,1.4,0.2"] * 6])
    response = client.post("/predict/csv", files={"file": ("rows.csv", text)}, headers=user_headers)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 6


def test_an_unknown_category_reads_the_same_everywhere(settings_factory, colors_model_dir: Path) -> None:
    with TestClient(create_app(settings_factory(model_dir=colors_model_dir))) as client:
        headers = bearer(get_token(client, *ADMIN))
        rows = [{"color": "red", "size": 1.0}, {"color": "purple", "size": 1.0}]
        [json_item] = _predict(client, headers, rows)
        [csv_item] = _csv(client, headers, ["size", "color"], ["1.0,red", "1.0,purple"])
        tensors = [
            {"name": "color", "shape": [2], "datatype": "BYTES", "data": ["red", "purple"]},
            {"name": "size", "shape": [2], "datatype": "FP64", "data": [1.0, 1.0]},
        ]
        _same_words(json_item, csv_item, _v2(client, headers, tensors))
        assert json_item["type"] == "literal_error"
        assert json_item["msg"] == "not a category seen in training; expected one of 'blue', 'green', 'red'"
