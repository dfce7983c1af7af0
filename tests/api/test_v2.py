"""The Open Inference Protocol (V2 REST) routes.

First through a client no one here wrote, tritonclient's HTTP client, against the real server
(python -m app.serve on a free port: the client speaks HTTP through geventhttpclient, not ASGI), with
its defaults (binary tensors) and with JSON data. Then the edge cases through the suite's TestClient,
on SQLite and PostgreSQL. Answers are checked against /predict's for the same rows.

tritonclient writes its own headers into the dict it is given, so each call gets a fresh one (auth()).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from app.core.artifacts import METADATA_FILE, ModelMetadata, write_json_atomic
from app.main import create_app
from tests.support.models import IRIS_FEATURES, write_model
from tests.support.servers import Served, api_server
from tests.support.tokens import ADMIN, bearer, get_token, login

IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 2.8, 4.4, 1.3]])
CLASSES = ["setosa", "versicolor", "virginica"]
INFER = "/v2/models/predictor/infer"


# Helpers: /predict's answers to compare with, and V2 tensors as JSON.


def predicted(post: Callable[..., httpx.Response], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = post("/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def as_instances(matrix: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(IRIS_FEATURES, map(float, row), strict=True)) for row in matrix]


def assert_same_as_predict(labels: np.ndarray, probabilities: np.ndarray, expected: list[dict]) -> None:
    assert [str(label) for label in labels.tolist()] == [p["label"] for p in expected]
    assert probabilities.tolist() == [[p["probabilities"][c] for c in CLASSES] for p in expected]


def tensor(name: str, data: list[Any], datatype: str = "FP64", shape: list[int] | None = None) -> dict:
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


def iris_tensors(matrix: np.ndarray = IRIS_ROWS[:1]) -> list[dict]:
    return [tensor(name, matrix[:, j].tolist()) for j, name in enumerate(IRIS_FEATURES)]


def outputs_by_name(body: dict) -> dict[str, dict]:
    return {output["name"]: output for output in body["outputs"]}


# A real server and tritonclient.


@pytest.fixture(scope="module")
def iris_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("v2-iris")
    write_model(folder / "models", "iris")
    with api_server(folder, folder / "models") as api:
        yield api


@pytest.fixture(scope="module")
def colors_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A regression on a categorical column and a numeric one that had gaps in training."""
    folder = tmp_path_factory.mktemp("v2-colors")
    write_model(folder / "models", "colors")
    with api_server(folder, folder / "models") as api:
        yield api


def triton_client(api: Served) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=api.url.removeprefix("http://"))


def auth_for(api: Served, scope: str | None = None) -> Callable[[], dict[str, str]]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        header = bearer(get_token(client, *ADMIN, scope=scope))
    return lambda: dict(header)


def http_post(api: Served) -> Callable[..., httpx.Response]:
    headers = login(api.url, *ADMIN)
    return lambda path, **kw: httpx.post(api.url + path, headers=headers, timeout=10, **kw)


def per_feature_inputs(matrix: np.ndarray, datatype: str = "FP64", binary: bool = True) -> list:
    inputs = []
    for j, name in enumerate(IRIS_FEATURES):
        column = matrix[:, j]
        tensor_input = triton.InferInput(name, list(column.shape), datatype)
        tensor_input.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor_input)
    return inputs


@pytest.mark.slow
def test_tritonclient_health_server_and_model_metadata(iris_api: Served) -> None:
    client, auth = triton_client(iris_api), auth_for(iris_api)
    # Health is open, as /health and /ready are.
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(headers=auth()) == {
        "name": "MLOps API Predictor",
        "version": "0.1.0",
        "extensions": [],
    }
    assert client.is_model_ready("predictor", headers=auth())
    assert client.is_model_ready("predictor", "v1", headers=auth())
    assert not client.is_model_ready("predictor", "v0", headers=auth())
    assert not client.is_model_ready("predictor")  # no token

    metadata = client.get_model_metadata("predictor", headers=auth())
    assert metadata["name"] == "predictor" and metadata["versions"] == ["v1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        (name, "FP64", [-1]) for name in IRIS_FEATURES
    ]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [-1]
    assert outputs["probabilities"]["shape"] == [-1, 3]
    assert outputs["probabilities"]["parameters"]["classes"] == CLASSES
    assert metadata["parameters"]["matrix_input"] == "input-0"
    assert client.get_model_metadata("predictor", "v1", headers=auth()) == metadata


@pytest.mark.slow
def test_tritonclient_infer_per_feature_answers_as_predict(iris_api: Served) -> None:
    client, auth = triton_client(iris_api), auth_for(iris_api)
    expected = predicted(http_post(iris_api), as_instances(IRIS_ROWS))
    for binary in (True, False):  # tritonclient's default (binary tensors), and JSON data
        result = client.infer(
            "predictor", per_feature_inputs(IRIS_ROWS, binary=binary), request_id="r-1", headers=auth()
        )
        assert_same_as_predict(result.as_numpy("label"), result.as_numpy("probabilities"), expected)
        response = result.get_response()
        assert response["id"] == "r-1"
        assert response["model_name"] == "predictor" and response["model_version"] == "v1"
        assert outputs_by_name(response)["probabilities"]["parameters"] == {"classes": CLASSES}


@pytest.mark.slow
def test_tritonclient_infer_one_matrix_tensor_fp32_int64_and_an_output_subset(iris_api: Served) -> None:
    client, auth, post = triton_client(iris_api), auth_for(iris_api), http_post(iris_api)

    matrix = triton.InferInput("input-0", list(IRIS_ROWS.shape), "FP64")
    matrix.set_data_from_numpy(IRIS_ROWS)
    result = client.infer("predictor", [matrix], headers=auth())
    expected = predicted(post, as_instances(IRIS_ROWS))
    assert_same_as_predict(result.as_numpy("label"), result.as_numpy("probabilities"), expected)

    # FP32: the model sees the float32 values the client had, as /predict would given them.
    rows32 = IRIS_ROWS.astype(np.float32)
    result = client.infer("predictor", per_feature_inputs(rows32, "FP32"), headers=auth())
    expected = predicted(post, as_instances(rows32.astype(np.float64)))
    assert_same_as_predict(result.as_numpy("label"), result.as_numpy("probabilities"), expected)

    integers = np.array([[5, 3, 1, 0], [7, 3, 5, 2]], dtype=np.int64)
    only_labels = [triton.InferRequestedOutput("label")]
    result = client.infer(
        "predictor", per_feature_inputs(integers, "INT64"), outputs=only_labels, headers=auth()
    )
    assert result.as_numpy("probabilities") is None
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    expected = predicted(post, as_instances(integers.astype(np.float64)))
    assert result.as_numpy("label").tolist() == [p["label"] for p in expected]

    # The /versions/{version} form, for the version served.
    result = client.infer("predictor", [matrix], model_version="v1", headers=auth())
    assert result.get_response()["model_version"] == "v1"


def _replace(inputs: list, name: str, replacement: Any) -> list:
    return [replacement if i.name() == name else i for i in inputs]


def _input(name: str, values: np.ndarray, datatype: str = "FP64") -> triton.InferInput:
    tensor_input = triton.InferInput(name, list(values.shape), datatype)
    tensor_input.set_data_from_numpy(values)
    return tensor_input


BAD_TENSORS = {
    "wrong shape": (
        lambda inputs: _replace(inputs, "sepal_length", _input("sepal_length", np.ones((2, 2)))),
        "400",
        "must have the shape [rows] or [rows, 1]",
    ),
    "unknown name": (
        lambda inputs: _replace(inputs, "petal_width", _input("petal_wdth", np.ones(2))),
        "400",
        "unknown input 'petal_wdth'",
    ),
    "wrong datatype": (
        lambda inputs: _replace(inputs, "sepal_width", _input("sepal_width", np.ones(2, bool), "BOOL")),
        "400",
        "its datatype must be FP64, FP32, INT64, not 'BOOL'",
    ),
    "infinite": (
        lambda inputs: _replace(inputs, "sepal_length", _input("sepal_length", np.array([5.0, np.inf]))),
        "422",
        "row 1, 'sepal_length': not a finite number; expected a finite number",
    ),
    "missing value": (
        lambda inputs: _replace(inputs, "sepal_length", _input("sepal_length", np.array([np.nan, 5.0]))),
        "422",
        "row 0, 'sepal_length': missing; expected a value: this feature had no missing values in training",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_TENSORS)
def test_tritonclient_bad_tensors_raise_with_the_servers_message(iris_api: Served, case: str) -> None:
    change, status, message = BAD_TENSORS[case]
    inputs = change(per_feature_inputs(IRIS_ROWS[:2]))
    with pytest.raises(InferenceServerException) as refused:
        triton_client(iris_api).infer("predictor", inputs, headers=auth_for(iris_api)())
    assert refused.value.status() == status
    assert message in refused.value.message()


@pytest.mark.slow
def test_tritonclient_tokens_scopes_and_unknown_models(iris_api: Served) -> None:
    client, inputs = triton_client(iris_api), per_feature_inputs(IRIS_ROWS[:1])
    refusals = [
        (lambda: client.infer("predictor", inputs), "401", "Not authenticated"),
        (
            lambda: client.infer("predictor", inputs, headers={"Authorization": "Bearer nonsense"}),
            "401",
            "Could not validate credentials",
        ),
        (
            lambda: client.infer("predictor", inputs, headers=auth_for(iris_api, scope="admin")()),
            "403",
            "this needs the scope predict",
        ),
        (lambda: client.get_model_metadata("predictor"), "401", "Not authenticated"),
        (
            lambda: client.get_model_metadata("iris", headers=auth_for(iris_api)()),
            "404",
            "unknown model 'iris': this server serves 'predictor'",
        ),
        (
            lambda: client.infer("predictor", inputs, model_version="v0", headers=auth_for(iris_api)()),
            "404",
            "version 'v0' is not served: only the serving version, v1, is loaded",
        ),
    ]
    for call, status, message in refusals:
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == status, message
        assert message in refused.value.message()


@pytest.mark.slow
def test_tritonclient_bytes_categories_and_gaps_answer_as_predict(colors_api: Served) -> None:
    client, auth = triton_client(colors_api), auth_for(colors_api)
    colors = np.array(["red", "blue", "green"], dtype=object)
    sizes = np.array([2.0, np.nan, 7.5])  # `size` had gaps in training: NaN is a missing value
    metadata = client.get_model_metadata("predictor", headers=auth())
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [("color", "BYTES"), ("size", "FP64")]
    assert metadata["inputs"][0]["parameters"]["categories"] == ["blue", "green", "red"]
    assert "matrix_input" not in metadata["parameters"]

    expected = predicted(
        http_post(colors_api),
        [{"color": c, "size": None if np.isnan(s) else s} for c, s in zip(colors, sizes, strict=True)],
    )
    for binary in (True, False):
        color, size = triton.InferInput("color", [3], "BYTES"), triton.InferInput("size", [3, 1], "FP64")
        color.set_data_from_numpy(colors, binary_data=binary)
        size.set_data_from_numpy(sizes.reshape(3, 1), binary_data=binary)
        result = client.infer("predictor", [color, size], headers=auth())
        assert result.as_numpy("value").tolist() == [p["value"] for p in expected]

    unknown = triton.InferInput("color", [3], "BYTES")
    unknown.set_data_from_numpy(np.array(["red", "purple", "mauve"], dtype=object))
    size = _input("size", sizes)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("predictor", [unknown, size], headers=auth())
    assert refused.value.status() == "422"
    assert refused.value.message() == (
        "row 1, 'color': not a category seen in training; expected one of 'blue', 'green', 'red'; "
        "row 2, 'color': not a category seen in training; expected one of 'blue', 'green', 'red'"
    )


# The edge cases, through the TestClient (max_batch_rows is 5 here).


def post_infer(client: TestClient, headers: dict[str, str], body: Any, path: str = INFER) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=headers | {"Content-Type": "application/json"})


def test_infer_answers_as_predict_with_flat_or_nested_data(client: TestClient, user_headers) -> None:
    expected = predicted(
        lambda path, **kw: client.post(path, headers=user_headers, **kw), as_instances(IRIS_ROWS)
    )
    flat = {"id": "42", "inputs": iris_tensors(IRIS_ROWS)}
    nested = {
        "inputs": [
            tensor(name, [[v] for v in IRIS_ROWS[:, j].tolist()], shape=[3, 1])
            for j, name in enumerate(IRIS_FEATURES)
        ]
    }
    matrix = {"inputs": [tensor("input-0", IRIS_ROWS.tolist(), shape=[3, 4])]}
    for body in (flat, nested, matrix):
        response = post_infer(client, user_headers, body)
        assert response.status_code == 200, response.text
        outputs = outputs_by_name(response.json())
        assert outputs["label"] == {
            "name": "label",
            "shape": [3],
            "datatype": "BYTES",
            "data": ["setosa", "virginica", "versicolor"],
        }
        probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
        assert_same_as_predict(np.array(outputs["label"]["data"]), probabilities, expected)
    assert post_infer(client, user_headers, flat).json()["id"] == "42"
    assert "id" not in post_infer(client, user_headers, nested).json()


def test_the_model_is_addressed_by_its_registered_name(settings_factory, model_dir: Path) -> None:
    metadata = ModelMetadata.read(model_dir)
    write_json_atomic(model_dir / METADATA_FILE, metadata.model_copy(update={"registered_model": "iris"}))
    with TestClient(create_app(settings_factory())) as client:
        headers = bearer(get_token(client, *ADMIN))
        assert client.get("/v2/models/iris", headers=headers).json()["name"] == "iris"
        answer = post_infer(client, headers, {"inputs": iris_tensors()}, "/v2/models/iris/versions/v1/infer")
        assert answer.status_code == 200 and answer.json()["model_name"] == "iris"
        refused = client.get("/v2/models/predictor/ready", headers=headers)
        assert (refused.status_code, refused.json()) == (
            404,
            {"error": "unknown model 'predictor': this server serves 'iris'"},
        )


BAD_REQUESTS: dict[str, tuple[Any, int, str]] = {
    "not JSON": (b"{nope", 400, "invalid inference request: Invalid JSON"),
    "no inputs": ({"id": "1"}, 400, "invalid inference request: inputs: Field required"),
    "a misspelt field": (
        {"inputs": [{**tensor("sepal_length", [1.0]), "datatyp": "FP64"}]},
        400,
        "inputs.0.datatyp: Extra inputs are not permitted",
    ),
    "empty inputs": ({"inputs": []}, 400, "the request has no inputs"),
    "a feature twice": (
        {"inputs": [*iris_tensors(), tensor("sepal_length", [1.0])]},
        400,
        "input 'sepal_length' given more than once",
    ),
    "a missing feature": ({"inputs": iris_tensors()[:3]}, 400, "missing input 'petal_width'"),
    "an unknown name": (
        {"inputs": [*iris_tensors(), tensor("colour", [1.0])]},
        400,
        "unknown input 'colour': this model's inputs are its features sepal_length, sepal_width, "
        "petal_length, petal_width, or one input-0 tensor holding them all",
    ),
    "rows that differ": (
        {"inputs": [*iris_tensors()[:3], tensor("petal_width", [0.2, 0.3])]},
        400,
        "the inputs must have the same number of rows; they have 'sepal_length' 1, 'sepal_width' 1, "
        "'petal_length' 1, 'petal_width' 2",
    ),
    "data shorter than its shape": (
        {"inputs": [*iris_tensors(IRIS_ROWS[:2])[:3], tensor("petal_width", [0.2], shape=[2])]},
        400,
        "input 'petal_width' has 1 element of data; expected 2 (its shape is [2])",
    ),
    "ragged data": (
        {"inputs": [tensor("input-0", [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0]], shape=[2, 4])]},
        400,
        "input 'input-0': data must be flat, or nested with every row the same length",
    ),
    "strings in an FP64 tensor": (
        {"inputs": [*iris_tensors()[:3], tensor("petal_width", ["0.2"])]},
        400,
        "input 'petal_width' is FP64: its data must be numbers (or null)",
    ),
    "booleans in an FP64 tensor": (
        {"inputs": [*iris_tensors()[:3], tensor("petal_width", [True])]},
        400,
        "input 'petal_width' is FP64: its data must be numbers (or null)",
    ),
    "fractions in an INT64 tensor": (
        {"inputs": [*iris_tensors()[:3], tensor("petal_width", [0.2], "INT64")]},
        400,
        "input 'petal_width' is INT64: its data must be integers (or null)",
    ),
    "a matrix of the wrong width": (
        {"inputs": [tensor("input-0", [5.1, 3.5, 1.4], shape=[1, 3])]},
        400,
        "input-0 must have the shape [rows, 4], its columns sepal_length, sepal_width, petal_length, "
        "petal_width; got [1, 3]",
    ),
    "a matrix and a feature": (
        {"inputs": [tensor("input-0", [5.1, 3.5, 1.4, 0.2], shape=[1, 4]), tensor("sepal_length", [1.0])]},
        400,
        "input-0 holds every feature: send it alone, or one tensor per feature",
    ),
    "an unknown output": (
        {"inputs": iris_tensors(), "outputs": [{"name": "value"}]},
        400,
        "unknown output 'value': this model's outputs are label, probabilities",
    ),
    "a negative dimension": (
        {"inputs": [tensor("input-0", [5.1, 3.5, 1.4, 0.2], shape=[-1, 4])]},
        400,
        "inputs.0.shape.0: Input should be greater than or equal to 0",
    ),
    "NaN": (
        {"inputs": [*iris_tensors()[:3], tensor("petal_width", [None])]},
        422,
        "row 0, 'petal_width': missing; expected a value: this feature had no missing values in training",
    ),
    "non-finite in the matrix": (
        b'{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",'
        b' "data": [5.1, 3.5, 1.4, 0.2, Infinity, 3.0, 5.2, 2.3]}]}',
        422,
        "row 1, 'sepal_length': not a finite number; expected a finite number",
    ),
    "past FP32's range": (
        {"inputs": [*iris_tensors()[:3], tensor("petal_width", [1e39], "FP32")]},
        422,
        "row 0, 'petal_width': not a finite number; expected a finite number",
    ),
    "no rows": (
        {"inputs": [tensor(name, [], shape=[0]) for name in IRIS_FEATURES]},
        422,
        "the batch has no rows; expected 1 to 5 rows per request (MAX_BATCH_ROWS)",
    ),
    "too many rows": (
        {"inputs": [tensor("input-0", [5.1, 3.5, 1.4, 0.2] * 6, shape=[6, 4])]},
        422,
        "the batch has 6 rows; expected 1 to 5 rows per request (MAX_BATCH_ROWS)",
    ),
    "no finite answer": (
        {
            "inputs": [
                *iris_tensors()[:1],
                tensor("sepal_width", [1.7976931348623157e308]),
                *iris_tensors()[2:],
            ]
        },
        422,
        "row 0, 'sepal_width': the model has no finite answer for this row: sepal_width is far outside",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_answer_the_protocols_error(client: TestClient, user_headers, case: str) -> None:
    body, status, message = BAD_REQUESTS[case]
    response = post_infer(client, user_headers, body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert message in response.json()["error"]


def test_binary_tensors_are_read_after_the_json(client: TestClient, user_headers) -> None:
    """Triton's binary tensor data extension, what tritonclient sends by default."""
    data = IRIS_ROWS[:2].astype("<f8").tobytes()
    header = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 4],
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    part = json.dumps(header).encode()
    framed = user_headers | {"Inference-Header-Content-Length": str(len(part))}
    response = post_infer(client, framed, part + data)
    assert response.status_code == 200, response.text
    assert outputs_by_name(response.json())["label"]["data"] == ["setosa", "virginica"]

    refused = post_infer(client, framed, part + data[:-8])
    assert refused.status_code == 400
    assert (
        refused.json()["error"]
        == "the binary part is 56 bytes, but the inputs' binary_data_size add up to 64"
    )
    too_long = user_headers | {"Inference-Header-Content-Length": "99999"}
    assert post_infer(client, too_long, part + data).status_code == 400


def test_categories_gaps_and_their_errors(settings_factory, colors_model_dir: Path) -> None:
    with TestClient(create_app(settings_factory(model_dir=colors_model_dir))) as client:
        headers = bearer(get_token(client, *ADMIN))
        rows = [{"color": "red", "size": 2.0}, {"color": "blue", "size": None}]
        expected = [
            p["value"] for p in predicted(lambda path, **kw: client.post(path, headers=headers, **kw), rows)
        ]
        body = {"inputs": [tensor("color", ["red", "blue"], "BYTES"), tensor("size", [2.0, None])]}
        response = post_infer(client, headers, body)
        assert response.status_code == 200, response.text
        value, ids = response.json()["outputs"]
        assert value == {"name": "value", "shape": [2], "datatype": "FP64", "data": expected}
        assert ids["name"] == "prediction_id" and ids["shape"] == [2] and ids["datatype"] == "BYTES"

        refusals = {
            # `color` had no gaps in training: null is refused, as /predict refuses it.
            "missing category": (
                [tensor("color", ["red", None], "BYTES"), tensor("size", [2.0, 3.0])],
                422,
                "row 1, 'color': missing; expected a value: this feature had no missing values in training",
            ),
            "number for a category": (
                [tensor("color", [1.0, 2.0]), tensor("size", [2.0, 3.0])],
                400,
                "input 'color' is categorical: its datatype must be BYTES, not 'FP64'",
            ),
            "numbers in a BYTES tensor": (
                [tensor("color", [1, 2], "BYTES"), tensor("size", [2.0, 3.0])],
                400,
                "input 'color' is BYTES: its data must be strings (or null)",
            ),
            "a category for a number": (
                [tensor("color", ["red", "red"], "BYTES"), tensor("size", ["2", "3"], "BYTES")],
                400,
                "input 'size' is numeric: its datatype must be FP64, FP32, INT64, not 'BYTES'",
            ),
            "one matrix for a mixed model": (
                [tensor("input-0", [1.0, 2.0], shape=[1, 2])],
                400,
                "input-0 takes every feature at once only when all are numeric",
            ),
            "every problem at once": (
                [
                    tensor("color", ["purple", "red", "", "x"], "BYTES"),
                    tensor("size", [1.0, 1.0, 1e999, 1.0]),
                ],
                422,
                "row 0, 'color': not a category seen in training; expected one of 'blue', 'green', 'red'; "
                "row 2, 'color': missing; expected a value: this feature had no missing values in training; "
                "row 2, 'size': not a finite number; expected a finite number",
            ),
        }
        for case, (inputs, status, message) in refusals.items():
            refused = post_infer(client, headers, {"inputs": inputs})
            assert refused.status_code == status, (case, refused.text)
            assert message in refused.json()["error"], (case, refused.json())
        # The validation metric counts each refused feature, as /predict's 422s do.
        before = REGISTRY.get_sample_value("predictor_validation_errors_total", {"field": "color"}) or 0.0
        post_infer(client, headers, {"inputs": refusals["missing category"][0]})
        assert (
            REGISTRY.get_sample_value("predictor_validation_errors_total", {"field": "color"}) == before + 1
        )


def test_infer_is_counted_in_the_metrics_like_predict(client: TestClient, user_headers) -> None:
    def count() -> float:
        return (
            REGISTRY.get_sample_value(
                "predictor_predictions_total", {"model_version": "v1", "label": "setosa"}
            )
            or 0.0
        )

    before = count()
    assert post_infer(client, user_headers, {"inputs": iris_tensors(IRIS_ROWS[[0, 0]])}).status_code == 200
    assert count() == before + 2
    route = {"method": "POST", "route": "/v2/models/{name}/infer", "status": "200"}
    assert (REGISTRY.get_sample_value("predictor_http_requests_total", route) or 0.0) >= 1


def test_auth_errors_are_in_the_protocols_shape(client: TestClient, user_headers) -> None:
    missing = post_infer(client, {}, {"inputs": iris_tensors()})
    assert (missing.status_code, missing.json()) == (401, {"error": "Not authenticated"})
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v2/models/predictor", headers={"Authorization": "Bearer x"}).json() == {
        "error": "Could not validate credentials"
    }
    admin_only = bearer(get_token(client, *ADMIN, scope="admin"))
    forbidden = post_infer(client, admin_only, {"inputs": iris_tensors()})
    assert forbidden.status_code == 403
    assert forbidden.json() == {"error": "Not enough permissions: this needs the scope predict"}
    # Metadata and readiness take any token, as /model-info does.
    assert client.get("/v2/models/predictor/ready", headers=admin_only).json() == {
        "name": "predictor",
        "ready": True,
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    compressed = post_infer(client, user_headers | {"Content-Encoding": "gzip"}, {"inputs": iris_tensors()})
    assert compressed.status_code == 415 and "send the body uncompressed" in compressed.json()["error"]


def test_without_a_model_v2_is_live_but_not_ready(settings_factory, tmp_path: Path) -> None:
    with TestClient(create_app(settings_factory(model_dir=tmp_path / "empty"))) as client:
        headers = bearer(get_token(client, *ADMIN))
        assert client.get("/v2/health/live").status_code == 200
        for response in (
            client.get("/v2/health/ready"),
            client.get("/v2/models/predictor/ready", headers=headers),
            post_infer(client, headers, {"inputs": iris_tensors()}),
        ):
            assert response.status_code == 503
            assert response.json()["error"].startswith("model not loaded")


def test_the_v2_routes_are_in_the_openapi_spec(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    } <= set(spec["paths"])
    body = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["inputs"]
    assert "$ref" not in json.dumps(body)  # written in place: the spec has no $defs to point to
