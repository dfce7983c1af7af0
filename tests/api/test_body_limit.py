"""Request bodies stop being read, and answer 413 JSON, once they pass their route's limit, declared or not.

In-process tests drive the app with bodies from generators (sent chunk by chunk, no Content-Length);
the slow ones send a 300 MB chunked body to a real server and watch its peak memory.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.api.body_limit import (
    CSV_BODY_PATHS,
    LARGE_BODY_PATHS,
    MAX_BODY_BYTES,
    SMALL_BODY_BYTES,
    BodyLimitMiddleware,
)
from app.main import create_app
from tests.support.memory import reset_peak_rss, status_bytes
from tests.support.models import IRIS_FEATURES, IRIS_ROW, write_model
from tests.support.servers import api_server
from tests.support.tokens import ADMIN, bearer, get_token, login

MiB = 1024 * 1024
CSV_LIMIT = 4 * MiB  # MAX_CSV_BYTES of the real server below
Headers = dict[str, str]


def chunks(total: int, size: int = MiB, fill: bytes = b" ") -> Iterator[bytes]:
    """`total` bytes in pieces; JSON whitespace, so only the limit can refuse it."""
    while total > 0:
        yield fill * min(size, total)
        total -= size


def upload(size: int, boundary: str = "limit-test") -> tuple[Iterator[bytes], str]:
    """A multipart body with one file of `size` bytes, from a generator, and its Content-Type."""

    def parts() -> Iterator[bytes]:
        disposition = 'Content-Disposition: form-data; name="file"; filename="x.csv"'
        yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        yield from chunks(size, fill=b"1")
        yield f"\r\n--{boundary}--\r\n".encode()

    return parts(), f"multipart/form-data; boundary={boundary}"


def too_large(limit: int) -> dict[str, str]:
    return {"detail": f"request body too large (limit {limit} bytes)"}


# --- the middleware alone -------------------------------------------------------------------------


def test_reading_stops_at_the_first_chunk_past_the_limit() -> None:
    pulled: list[int] = []
    sent: list[Message] = []

    async def receive() -> Message:
        pulled.append(1)
        return {"type": "http.request", "body": b"x" * 40, "more_body": True}  # never ends

    async def send(message: Message) -> None:
        sent.append(message)

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            await receive()

    scope = {"type": "http", "method": "POST", "path": "/token", "headers": []}
    asyncio.run(BodyLimitMiddleware(reader, default=100)(scope, receive, send))
    assert len(pulled) == 3  # 40, 80, then 120 > 100
    assert sent[0]["status"] == 413
    assert sent[1]["body"] == b'{"detail":"request body too large (limit 100 bytes)"}'


def test_a_declared_length_past_the_limit_is_refused_before_the_app_runs() -> None:
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not run")

    async def receive() -> Message:
        raise AssertionError("the body must not be read")

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(MAX_BODY_BYTES + 1).encode())]
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    asyncio.run(BodyLimitMiddleware(app)(scope, receive, send))
    assert sent[0]["status"] == 413


def test_large_limits_name_real_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    posts = {path for path, operations in paths.items() if "post" in operations}
    assert posts >= LARGE_BODY_PATHS | CSV_BODY_PATHS


# --- the app, in process --------------------------------------------------------------------------


def test_a_form_or_json_body_past_the_small_limit_is_413_not_400(
    client: TestClient, admin_headers: Headers
) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    login = client.post("/token", content=chunks(SMALL_BODY_BYTES + 1, 4096, b"a"), headers=form)
    assert login.status_code == 413 and login.json() == too_large(SMALL_BODY_BYTES)
    assert login.headers["X-Request-ID"]
    declared = client.post("/token", data={"username": "x" * SMALL_BODY_BYTES, "password": "p"})
    assert declared.status_code == 413 and declared.json() == too_large(SMALL_BODY_BYTES)
    json_body = admin_headers | {"Content-Type": "application/json"}
    users = client.post("/users", content=chunks(SMALL_BODY_BYTES + 1, 4096), headers=json_body)
    assert users.status_code == 413 and users.json() == too_large(SMALL_BODY_BYTES)
    assert client.post("/token", data={"username": ADMIN[0], "password": ADMIN[1]}).status_code == 200


def test_predict_and_its_uploads_past_the_large_limit(
    client: TestClient, user_headers: Headers, admin_headers: Headers
) -> None:
    json_body = user_headers | {"Content-Type": "application/json"}
    chunked = client.post("/predict", content=chunks(MAX_BODY_BYTES + 1), headers=json_body)
    assert chunked.status_code == 413 and chunked.json() == too_large(MAX_BODY_BYTES)
    body, content_type = upload(MAX_BODY_BYTES)
    train = client.post("/train", content=body, headers=admin_headers | {"Content-Type": content_type})
    assert train.status_code == 413 and train.json() == too_large(MAX_BODY_BYTES)


def test_csv_uploads_have_their_own_limit_max_csv_bytes(settings_factory) -> None:
    limit = 2 * MiB
    with TestClient(create_app(settings_factory(max_csv_bytes=limit))) as client:
        headers = bearer(get_token(client, *ADMIN))
        csv_body = headers | {"Content-Type": "text/csv"}
        rows = [",".join(IRIS_FEATURES).encode() + b"\n", *[b"5.1,3.5,1.4,0.2\n" * 4096] * 40]  # 2.5 MiB
        chunked = client.post("/predict/csv", content=iter(rows), headers=csv_body)
        assert chunked.status_code == 413 and chunked.json() == too_large(limit)
        body, content_type = upload(limit)
        form = client.post("/predict/csv", content=body, headers=headers | {"Content-Type": content_type})
        assert form.status_code == 413 and form.json() == too_large(limit)
        under = "\n".join([",".join(IRIS_FEATURES), "5.1,3.5,1.4,0.2"]).encode()
        assert client.post("/predict/csv", content=iter([under]), headers=csv_body).status_code == 200


def test_the_v2_infer_routes_have_the_limit_of_predict() -> None:
    middleware = BodyLimitMiddleware(None)  # type: ignore[arg-type]
    for path in ("/v2/models/predictor/infer", "/v2/models/predictor/versions/v1/infer/"):
        assert middleware.limit_for({"path": path}) == MAX_BODY_BYTES
    for path in ("/v2/models/predictor", "/v2/models/a/b/infer", "/v2/models//infer"):
        assert middleware.limit_for({"path": path}) == SMALL_BODY_BYTES


def test_v2_infer_past_the_limit_answers_in_the_protocols_shape(
    client: TestClient, user_headers: Headers
) -> None:
    """{"error": ...}, as every V2 error, whether the length was declared or counted."""
    json_body = user_headers | {"Content-Type": "application/json"}
    url = "/v2/models/predictor/infer"
    chunked = client.post(url, content=chunks(MAX_BODY_BYTES + 1), headers=json_body)
    assert chunked.status_code == 413 and chunked.json() == {"error": too_large(MAX_BODY_BYTES)["detail"]}
    declared = client.post(url, content=b"{" + b" " * MAX_BODY_BYTES + b"}", headers=json_body)
    assert declared.status_code == 413 and declared.json() == {"error": too_large(MAX_BODY_BYTES)["detail"]}


# --- a real server --------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Headers, int]]:
    """python -m app.serve on a free port: its URL, a predict token's header and its pid."""
    write_model(tmp_path / "models")
    settings = {
        "VERSIONS_DIR": str(tmp_path / "versions"),
        "LOG_LEVEL": "WARNING",
        "MAX_CSV_BYTES": str(CSV_LIMIT),
    }
    with api_server(tmp_path, tmp_path / "models", **settings) as api:
        yield api.url, login(api.url, *ADMIN), api.process.pid


@pytest.mark.slow
def test_a_300_mb_chunked_body_is_refused_without_being_held(server: tuple[str, Headers, int]) -> None:
    base, headers, pid = server
    json_body = headers | {"Content-Type": "application/json"}
    warm = httpx.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=10)
    assert warm.status_code == 200
    before = reset_peak_rss(pid)
    response = httpx.post(f"{base}/predict", content=chunks(300 * MiB), headers=json_body, timeout=120)
    assert response.status_code == 413 and response.json() == too_large(MAX_BODY_BYTES)
    grown = status_bytes(pid, "VmHWM") - before
    assert grown < 64 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
    # The same connection pool, and the server, still serve.
    assert httpx.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, headers=headers).status_code == 200


@pytest.mark.slow
def test_over_http_declared_lengths_chunked_bodies_and_csv_uploads(server: tuple[str, Headers, int]) -> None:
    base, headers, _ = server
    host, port = base.removeprefix("http://").split(":")
    # Content-Length past the limit, and no body at all: the answer comes before any byte of it.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Authorization: {headers['Authorization']}\r\nContent-Length: {300 * MiB}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")

    def rows(count: int) -> Iterator[bytes]:
        yield b'{"instances": ['
        yield b",".join([json.dumps(IRIS_ROW).encode()] * count)
        yield b"]}"

    chunked = httpx.post(
        f"{base}/predict", content=rows(3), headers=headers | {"Content-Type": "application/json"}
    )
    assert chunked.status_code == 200 and len(chunked.json()["predictions"]) == 3

    row = b"5.1,3.5,1.4,0.2\n"
    big_csv = b"".join([",".join(IRIS_FEATURES).encode(), b"\n", row * (CSV_LIMIT // len(row))])
    declared = httpx.post(
        f"{base}/predict/csv", files={"file": ("rows.csv", big_csv, "text/csv")}, headers=headers, timeout=60
    )
    assert declared.status_code == 413 and declared.json() == too_large(CSV_LIMIT)

    # Streamed past the limit once the answer has begun: the rows that arrived whole are answered, then
    # the answer ends with the 413 it could no longer send as a status.
    def parts() -> Iterator[bytes]:
        yield b'--limit-test\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n\r\n'
        yield big_csv
        yield b"\r\n--limit-test--\r\n"

    form = {"Content-Type": "multipart/form-data; boundary=limit-test"}
    streamed = httpx.post(f"{base}/predict/csv", content=parts(), headers=headers | form, timeout=60)
    assert streamed.status_code == 200
    body = streamed.json()
    assert body["error"] == {"status": 413, "line": None, "detail": too_large(CSV_LIMIT)["detail"]}
    assert 0 < len(body["predictions"]) < len(big_csv) // len(row)
    assert {p["label"] for p in body["predictions"]} == {"setosa"}
