"""POST /predict/csv on files larger than a chunk: answered in order and in full, in every format, with a bad
line far into the file ending the answer after the rows before it; a bad line in the first chunk is a 422.

The small-file behaviour (messages, formats, the categorical model) is tested in test_predict.py. The slow
tests send files to a real server: answers arrive while the upload is still being sent, and a 190 MB file
goes through in bounded memory, from a client that sends all of it before it reads anything.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.main import create_app
from app.serving.csv_chunks import CHUNK_ROWS
from tests.support.answers import ID, without_ids
from tests.support.models import IRIS_FEATURES, write_model
from tests.support.servers import api_server
from tests.support.tokens import ADMIN, bearer, get_token, login

Headers = dict[str, str]
HEADER = ",".join(IRIS_FEATURES)
ROWS = 2 * CHUNK_ROWS + CHUNK_ROWS // 2  # three chunks, far more than MAX_BATCH_ROWS (5 in these tests)
CLASSES = ["setosa", "versicolor", "virginica"]
NDJSON = "application/x-ndjson"


def iris_lines(count: int, seed: int = 0) -> list[str]:
    """Rows around the iris data, one decimal each: every row differs enough that order shows."""
    rng = np.random.default_rng(seed)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    values = (low + rng.random((count, 4)) * (high - low)).round(1)
    return [",".join(f"{v:.1f}" for v in row) for row in values.tolist()]


def as_csv(lines: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def predict_json(client: TestClient, headers: Headers, lines: list[str]) -> list[dict]:
    """What /predict answers for these rows (at most MAX_BATCH_ROWS at a time)."""
    answers = []
    for start in range(0, len(lines), 5):
        rows = [
            dict(zip(IRIS_FEATURES, map(float, line.split(",")), strict=True))
            for line in lines[start : start + 5]
        ]
        response = client.post("/predict", json={"instances": rows}, headers=headers)
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
    return without_ids(answers)


def post_csv(client: TestClient, headers: Headers, data: bytes, accept: str | None = None) -> httpx.Response:
    extra = {"Accept": accept} if accept else {}
    return client.post("/predict/csv", files={"file": ("rows.csv", data)}, headers=headers | extra)


def predictions_of(response: httpx.Response, accept: str | None) -> tuple[list[dict], dict | None]:
    """The answer's predictions, as /predict writes them (each id checked, then masked), and its error
    (None when it ended well)."""
    if accept == "text/csv":
        lines = response.text.splitlines()
        error = lines.pop() if lines[-1].startswith("# error: ") else None
        rows = list(csv.DictReader(lines))
        found = [
            {
                "prediction_id": r["prediction_id"],
                "label": r["label"],
                "probabilities": {c: float(r[f"proba_{c}"]) for c in CLASSES},
            }
            for r in rows
        ]
        summary = {"summary": error} if error else None
    elif accept == NDJSON:
        found = [json.loads(line) for line in response.text.splitlines()]
        summary = found.pop()["error"] if "error" in found[-1] else None
    else:
        body = response.json()
        found, summary = body["predictions"], body.get("error")
    ids = [p["prediction_id"] for p in found]
    assert all(ID.match(i) for i in ids) and len(set(ids)) == len(ids)
    return without_ids(found), summary


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return iris_lines(ROWS)


@pytest.mark.parametrize("accept", [None, "text/csv", NDJSON])
def test_a_csv_larger_than_max_batch_rows_streams_back_in_order_with_every_row(
    client: TestClient, user_headers: Headers, lines: list[str], accept: str | None
) -> None:
    response = post_csv(client, user_headers, as_csv(lines), accept)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith(accept or "application/json")
    assert response.headers["X-Model-Version"] == "v1"
    predictions, error = predictions_of(response, accept)
    assert error is None
    assert len(predictions) == ROWS
    # The same answers as /predict, row for row, at the start, at chunk edges and at the end.
    sample = [0, 1, CHUNK_ROWS - 1, CHUNK_ROWS, CHUNK_ROWS + 1, 2 * CHUNK_ROWS, ROWS - 2, ROWS - 1]
    expected = predict_json(client, user_headers, [lines[i] for i in sample])
    assert [predictions[i] for i in sample] == expected
    if accept == "text/csv":  # the input columns as sent, in order
        echoed = [",".join(row[:4]) for row in csv.reader(response.text.splitlines()[1:])]
        assert echoed == lines


def test_each_chunk_is_scored_with_one_model_call_and_every_row_is_counted(
    client: TestClient, user_headers: Headers, lines: list[str]
) -> None:
    predictor = client.app.state.services.serving.current  # type: ignore[attr-defined]
    calls: list[int] = []
    original = predictor.model
    counting = dataclasses.replace(original, call=lambda x: calls.append(len(x)) or original.call(x))

    def counted() -> float:
        return sum(
            REGISTRY.get_sample_value("predictor_predictions_total", {"model_version": "v1", "label": c}) or 0
            for c in CLASSES
        )

    before = counted()
    object.__setattr__(predictor, "model", counting)
    try:
        response = post_csv(client, user_headers, as_csv(lines), NDJSON)
    finally:
        object.__setattr__(predictor, "model", original)
    assert response.status_code == 200
    assert calls == [CHUNK_ROWS, CHUNK_ROWS, ROWS - 2 * CHUNK_ROWS]
    assert counted() - before == ROWS


BAD_LINE = CHUNK_ROWS + 1234  # a line of the second chunk: line 1 is the header


@pytest.mark.parametrize("accept", [None, "text/csv", NDJSON])
@pytest.mark.parametrize(
    ("bad", "summary"),
    [
        ("5.1,abc,1.4,0.2", "sepal_width: Input should be a valid number"),
        ("5.1,3.5,1.4", "expected 4 fields, found 3"),
        ("5.1,1.7976931348623157e+308,-5e-324,0.2", "the model has no finite answer for this row"),
    ],
)
def test_a_bad_line_far_into_a_large_csv_ends_the_answer_after_the_rows_before_it(
    client: TestClient, user_headers: Headers, lines: list[str], accept: str | None, bad: str, summary: str
) -> None:
    rows = [*lines[: BAD_LINE - 2], bad, *lines[BAD_LINE - 2 :]]
    response = post_csv(client, user_headers, as_csv(rows), accept)
    assert response.status_code == 200  # sent before the bad line was read
    predictions, error = predictions_of(response, accept)
    assert len(predictions) == BAD_LINE - 2  # every row before it, none after
    assert predictions[-2:] == predict_json(client, user_headers, lines[BAD_LINE - 4 : BAD_LINE - 2])
    assert error is not None
    if accept == "text/csv":
        assert error["summary"].startswith(f"# error: line {BAD_LINE}: ")
        assert summary in error["summary"]
        return
    assert error["status"] == 422 and error["line"] == BAD_LINE
    if isinstance(error["detail"], str):  # a malformed line: the message of a small file's 422
        assert error["detail"] == f"line {BAD_LINE}: {summary}"
    else:  # invalid values: the errors of a small file's 422, for that row
        assert {e["line"] for e in error["detail"]} == {BAD_LINE}
        assert {e["row"] for e in error["detail"]} == {BAD_LINE - 2}
        assert summary.split(": ")[-1] in error["detail"][0]["msg"]


def test_a_bad_line_in_the_first_chunk_is_a_422_naming_it_before_any_answer(
    client: TestClient, user_headers: Headers, lines: list[str]
) -> None:
    rows = [*lines[:98], "5.1,abc,1.4,inf", *lines[98:]]  # line 100 of a file of three chunks
    response = post_csv(client, user_headers, as_csv(rows), "text/csv")
    assert response.status_code == 422
    assert [(e["line"], e["row"], e["field"]) for e in response.json()["detail"]] == [
        (100, 98, "sepal_width"),
        (100, 98, "petal_width"),
    ]
    malformed = post_csv(client, user_headers, as_csv([*lines[:98], '5.1,"3.5', *lines[98:]]))
    assert malformed.status_code == 422
    assert malformed.json()["detail"].startswith("line 100: malformed CSV")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "line 1: the CSV is empty"),
        (b"\n\n", "line 1: the CSV is empty"),
        (as_csv([]), "the CSV has a header but no rows"),
        (as_csv(["", " ", ""]), "the CSV has a header but no rows"),
        (as_csv(["5.1,3.5,1.4,0.2"], header="a,b,c,d"), "line 1: missing column(s) sepal_length"),
        (as_csv(["1"] * 10, header="x" * 5_000_000), "line 1: a row longer than 2 MiB"),
        (
            as_csv(['"5.1,3.5,1.4,0.2'] + ["5.1,3.5,1.4,0.2"] * 200_000),
            "line 2: malformed CSV: a quoted field",
        ),
    ],
)
def test_files_that_are_not_a_csv_of_the_models_columns_get_a_clear_422(
    client: TestClient, user_headers: Headers, data: bytes, expected: str
) -> None:
    response = post_csv(client, user_headers, data)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(expected), response.json()


def test_a_form_without_the_file_field_or_with_a_broken_body(
    client: TestClient, user_headers: Headers
) -> None:
    message = "send the CSV as the form field 'file'"
    other = {"other": ("rows.csv", as_csv(["5.1,3.5,1.4,0.2"]))}
    missing = client.post("/predict/csv", files=other, headers=user_headers)
    assert missing.status_code == 422 and missing.json()["detail"] == message
    as_field = client.post("/predict/csv", data={"file": "a,b\n1,2\n"}, files=other, headers=user_headers)
    assert as_field.status_code == 422 and as_field.json()["detail"] == message
    broken = {"Content-Type": "multipart/form-data; boundary=b"}
    response = client.post("/predict/csv", content=b"--b\r\nno headers end", headers=user_headers | broken)
    assert response.status_code in (400, 422)
    no_boundary = {"Content-Type": "multipart/form-data"}
    response = client.post("/predict/csv", content=b"x", headers=user_headers | no_boundary)
    assert response.status_code == 400


def test_the_file_is_read_as_csv_whatever_its_line_ends_quotes_and_spaces(
    client: TestClient, user_headers: Headers, lines: list[str]
) -> None:
    plain = lines[:3000]
    expected = predict_json(client, user_headers, plain[:5])
    variants = {
        "crlf": as_csv(plain).replace(b"\n", b"\r\n"),
        "bom": b"\xef\xbb\xbf" + as_csv(plain),
        "spaces": as_csv([" " + line.replace(",", " , ") for line in plain]),
        "quotes": as_csv(['"' + line.replace(",", '","') + '"' for line in plain]),
        "no last line end": as_csv(plain)[:-1],
        "underscores": as_csv([line.replace("5.", "5_0.", 1) if "5." in line else line for line in plain]),
    }
    for name, data in variants.items():
        response = post_csv(client, user_headers, data, NDJSON)
        assert response.status_code == 200, (name, response.text[:300])
        answers = without_ids([json.loads(line) for line in response.text.splitlines()])
        assert len(answers) == len(plain), name
        if name != "underscores":  # 5_0.1 is 50.1, as Python (and /predict's schema) read it
            assert answers[:5] == expected, name
    quoted = post_csv(client, user_headers, variants["quotes"], "text/csv")
    assert quoted.text.splitlines()[1].startswith(plain[0] + ",")  # cells as sent, quoted only if needed


def test_accept_picks_the_format_named_first(client: TestClient, user_headers: Headers) -> None:
    data = as_csv(iris_lines(3))
    for accept, media_type in [
        ("text/csv, application/x-ndjson", "text/csv"),
        ("application/x-ndjson;q=0.9, text/csv", NDJSON),
        ("*/*", "application/json"),
        ("application/json, text/csv", "application/json"),
    ]:
        assert post_csv(client, user_headers, data, accept).headers["content-type"].startswith(media_type)


def drive_upload(client: TestClient, headers: Headers, body: bytes) -> tuple[list[str], int, bytes]:
    """POST /predict/csv as an ASGI app hears it, 64 KiB a message: the order in which the app read
    the upload and started its answer ("body", "start"), the answer's status and its bytes."""
    pieces = [body[at : at + 65536] for at in range(0, len(body), 65536)]
    events: list[str] = []
    answer = bytearray()
    status: list[int] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict/csv",
        "raw_path": b"/predict/csv",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", headers["Authorization"].encode()),
            (b"content-type", b"text/csv"),
            (b"accept", b"text/csv"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def drive() -> None:
        async def receive() -> dict:
            await anyio.sleep(0)  # a network read: others run meanwhile
            if pieces:
                events.append("body")
                piece = pieces.pop(0)
                return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
            await anyio.sleep_forever()  # the client stays until its answer has come
            raise AssertionError

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                events.append("start")
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))

        await client.app(dict(scope), receive, send)

    assert client.portal is not None
    client.portal.call(drive)
    return events, status[0], bytes(answer)


@pytest.mark.parametrize("upload_first", [False, True])
def test_csv_upload_first_holds_the_answer_until_the_whole_upload_is_read(
    settings_factory, lines: list[str], upload_first: bool
) -> None:
    """What a proxy that passes a request body only until the answer starts needs (nginx); without
    it the answer starts while the upload is still arriving."""
    with TestClient(create_app(settings_factory(csv_upload_first=upload_first))) as client:
        events, status, answer = drive_upload(client, bearer(get_token(client, *ADMIN)), as_csv(lines))
    assert status == 200
    assert len(answer.decode().splitlines()) == 1 + ROWS
    last_body = len(events) - 1 - events[::-1].index("body")
    if upload_first:
        assert events.index("start") > last_body, events
    else:
        assert events.index("start") < last_body, events


def test_with_csv_upload_first_an_upload_past_max_csv_bytes_is_a_plain_413(
    settings_factory, lines: list[str]
) -> None:
    body = as_csv(lines)
    limit = len(body) // 2  # past the first chunk: without the setting, a 200 ending with the error
    settings = settings_factory(csv_upload_first=True, max_csv_bytes=limit)
    with TestClient(create_app(settings)) as client:
        _, status, answer = drive_upload(client, bearer(get_token(client, *ADMIN)), body)
    assert status == 413
    assert json.loads(answer) == {"detail": f"request body too large (limit {limit} bytes)"}


@pytest.fixture
def colors(settings_factory, colors_model_dir: Path) -> Iterator[tuple[TestClient, Headers]]:
    with TestClient(create_app(settings_factory(model_dir=colors_model_dir))) as client:
        yield client, bearer(get_token(client, *ADMIN))


def test_a_large_csv_for_a_categorical_model_with_gaps(colors: tuple[TestClient, Headers]) -> None:
    client, headers = colors
    rng = np.random.default_rng(1)
    colours = np.array(["red", "green", "blue"])[rng.integers(0, 3, ROWS)].tolist()
    sizes = [f"{v:.2f}" if i % 7 else "" for i, v in enumerate(rng.uniform(0, 10, ROWS).tolist())]
    lines = [f"{s},{c}" for c, s in zip(colours, sizes, strict=True)]  # the columns in an order of their own
    response = post_csv(client, headers, as_csv(lines, header="size,color"), "text/csv")
    assert response.status_code == 200, response.text[:300]
    rows = list(csv.DictReader(response.text.splitlines()))
    assert len(rows) == ROWS
    assert [r["color"] for r in rows] == colours and [r["size"] for r in rows] == sizes
    sample = [0, 7, CHUNK_ROWS + 3, ROWS - 1]
    instances = [{"color": colours[i], "size": float(sizes[i]) if sizes[i] else None} for i in sample]
    expected = client.post("/predict", json={"instances": instances}, headers=headers).json()["predictions"]
    assert [float(rows[i]["prediction"]) for i in sample] == [e["value"] for e in expected]
    # An unknown category far into the file: the rows before it answered, then its error.
    lines[BAD_LINE - 2] = "1.0,purple"
    late = post_csv(client, headers, as_csv(lines, header="size,color"), NDJSON)
    *answers, last = [json.loads(line) for line in late.text.splitlines()]
    assert len(answers) == BAD_LINE - 2
    [error] = last["error"]["detail"]
    assert (error["line"], error["field"], error["type"]) == (BAD_LINE, "color", "literal_error")
    assert "'blue'" in error["msg"]


# --- a real server --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Headers, int]]:
    """python -m app.serve with the tests' iris model: its URL, an admin's bearer header and its pid."""
    folder = tmp_path_factory.mktemp("csv-server")
    write_model(folder / "models")
    with api_server(folder, folder / "models", LOG_LEVEL="WARNING") as api:
        yield api.url, login(api.url, *ADMIN), api.process.pid


@pytest.mark.slow
def test_answers_arrive_while_the_upload_is_still_being_sent(server: tuple[str, Headers, int]) -> None:
    url, headers, _ = server
    host, port = url.removeprefix("http://").split(":")
    first, rest = (
        as_csv(iris_lines(CHUNK_ROWS + 10)),
        as_csv(iris_lines(3 * CHUNK_ROWS, seed=1), header="")[1:],
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /predict/csv HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\nAccept: text/csv\r\n"
            + f"Authorization: {headers['Authorization']}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%s\r\n" % (len(first), first)
        )
        received = b""
        while received.count(b"\n") < CHUNK_ROWS:  # the first chunk's answers, with the rest unsent
            piece = sock.recv(1 << 20)
            assert piece, "the server closed the connection"
            received += piece
        assert received.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        while not received.endswith(b"\r\n0\r\n\r\n"):
            piece = sock.recv(1 << 20)
            assert piece, "the server closed the connection"
            received += piece
    body = received.split(b"\r\n\r\n", 1)[1]
    answer = b"".join(_unchunked(body)).decode()
    assert len(answer.splitlines()) == 1 + CHUNK_ROWS + 10 + 3 * CHUNK_ROWS


def _unchunked(body: bytes) -> Iterator[bytes]:
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if not size:
            return
        yield body[:size]
        body = body[size + 2 :]


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.slow
def test_a_190_mb_csv_streams_through_in_bounded_memory(
    server: tuple[str, Headers, int], tmp_path: Path
) -> None:
    """httpx sends the whole file before it reads: the server reads the rest of it ahead to a temporary
    file while its answer waits, rather than deadlock. Its RSS is polled meanwhile."""
    url, headers, pid = server
    block = as_csv(iris_lines(100_000), header="")[1:]
    path = tmp_path / "large.csv"
    repeats = 120  # 12 million rows, 190 MB
    with path.open("wb") as out:
        out.write(HEADER.encode() + b"\n")
        for _ in range(repeats):
            out.write(block)
    warm = httpx.post(
        f"{url}/predict/csv", content=as_csv(iris_lines(10)), headers=headers | {"Content-Type": "text/csv"}
    )
    assert warm.status_code == 200
    before = peak = _status_bytes(pid, "VmRSS")
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _status_bytes(pid, "VmRSS"))
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    lines = 0
    started = time.perf_counter()
    try:
        with path.open("rb") as data, httpx.stream(
            "POST", f"{url}/predict/csv", content=data, timeout=300,
            headers=headers | {"Content-Type": "text/csv", "Accept": "text/csv"},
        ) as response:  # fmt: skip
            assert response.status_code == 200
            tail = b""
            for piece in response.iter_bytes():
                lines += piece.count(b"\n")
                tail = (tail + piece)[-200:]
    finally:
        done.set()
        poller.join()
    seconds = time.perf_counter() - started
    assert lines == 1 + repeats * 100_000, tail
    grown = peak - before
    print(f"{repeats * 100_000 / seconds:,.0f} rows/s, RSS +{grown / 2**20:.0f} MiB")
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
