"""Slow and oversized clients, all at once, while a predict user's load runs: headers sent a byte at a
time, connections that send nothing, a 10 GB body declared on every route that reads one, and a
chunked body that never ends on each of those routes. None holds the service: each is answered (413)
or cut off (headers too slow), and its connection closed; the load loses nothing and keeps its
latency; the replica's memory stays bounded.

All of it goes through the shipped nginx config (deploy/nginx/predictor.conf), as in compose and
`make stack`: uvicorn alone has no deadline for headers and reads a refused body to its end, so these
clients are the proxy's to cut. A bare `make run` does not pass this test; docs/api.md, "Slow
clients", says what to put in front of it.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from app.api.body_limit import MAX_BODY_BYTES, SMALL_BODY_BYTES
from tests.faults.conftest import CSV_LIMIT, Proxy, Stack, nginx_seconds, record
from tests.support.load import Load, percentile
from tests.support.memory import reset_peak_rss, status_bytes
from tests.support.models import IRIS_FEATURES
from tests.support.tokens import USER

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.nginx]

MiB = 1024 * 1024
TEN_GB = 10 * 1024**3
SLOW_CLIENTS = 20


def _socket_buffers() -> int:
    """Bytes a client may have sent past the limit before it reads the answer: what the kernel lets
    its send buffer and the receiving socket's buffer grow to (autotuned under load: the refused upload
    still stops there, 10 GB short of its end), at least 8 MiB."""
    try:
        sent = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        received = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 8 * MiB
    return max(8 * MiB, sent + received)


IN_FLIGHT = _socket_buffers()
BOUNDARY = "abuse"
# The shipped proxy's deadlines: for a request's headers, and for throwing away a refused body.
HEADER_TIMEOUT_SECONDS = nginx_seconds("client_header_timeout")
LINGER_SECONDS = nginx_seconds("lingering_time")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    content_type: str
    limit: int
    prelude: bytes = b""  # what the body starts with
    fill: bytes = b" "  # what it goes on with, for ever


def body_routes(stack: Stack) -> list[Route]:
    """Every operation of the OpenAPI spec that takes a body, its path filled in, with its limit."""
    spec = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    info = httpx.get(f"{stack.url}/model-info", headers=stack.admin, timeout=10).json()
    names = {
        "{name}": info.get("registered_model") or "predictor",
        "{version}": info["version"],
        "{username}": USER[0],
    }
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="rows.csv"\r\n\r\n'
    multipart = f"multipart/form-data; boundary={BOUNDARY}"
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            method = method.upper()
            concrete = path
            for placeholder, value in names.items():
                concrete = concrete.replace(placeholder, value)
            content = operation["requestBody"]["content"]
            if path == "/predict/csv":
                header = (",".join(IRIS_FEATURES) + "\n").encode()
                rows = b"5.1,3.5,1.4,0.2\n"
                routes.append(Route(method, concrete, multipart, CSV_LIMIT, part.encode() + header, rows))
            elif "multipart/form-data" in content:
                routes.append(Route(method, concrete, multipart, MAX_BODY_BYTES, part.encode(), b"1"))
            elif "application/x-www-form-urlencoded" in content:
                form = "application/x-www-form-urlencoded"
                routes.append(Route(method, concrete, form, SMALL_BODY_BYTES, fill=b"a"))
            else:
                large = path in ("/predict", "/train") or path.endswith("/infer")
                limit = MAX_BODY_BYTES if large else SMALL_BODY_BYTES
                routes.append(Route(method, concrete, "application/json", limit))
    return routes


def refused_past(route: Route) -> int:
    """The bytes after which a body is refused through the proxy. nginx reads a body whole before it
    passes it on (but for the CSV upload, streamed to the replica): past its own limit, the API's
    MAX_BODY_BYTES, it answers 413 itself, before the replica sees a byte (with the API's answer:
    tests/deploy/test_nginx.py). The CSV upload is refused by the replica, at its own limit."""
    return route.limit if route.path == "/predict/csv" else MAX_BODY_BYTES


def _request_head(stack: Stack, route: Route, framing: str) -> bytes:
    lines = [
        f"{route.method} {route.path} HTTP/1.1",
        "Host: faults",
        f"Content-Type: {route.content_type}",
        f"Authorization: {stack.admin['Authorization']}",
        framing,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body) if body else {}  # the whole answer: the connection has ended


@dataclass
class Endless:
    route: Route
    status: int | None = None
    body: dict | None = None
    sent_when_answered: int | None = None
    closed_after: float | None = None  # seconds from the answer to the connection's end
    error: str | None = None


def send_for_ever(stack: Stack, proxy: Proxy, route: Route, cap: int = 512 * MiB) -> Endless:
    """A chunked body that goes on until the server closes the connection (or `cap` bytes)."""
    outcome = Endless(route)
    piece = route.fill * (65536 // len(route.fill))
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    pending = _request_head(stack, route, "Transfer-Encoding: chunked")
    if route.prelude:
        pending += f"{len(route.prelude):x}\r\n".encode() + route.prelude + b"\r\n"
    sent, answer, answered = 0, b"", None
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:
        sock.setblocking(False)
        while sent < cap:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            try:
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
                    if answered is None and b"\r\n\r\n" in answer:
                        answered, outcome.sent_when_answered = time.monotonic(), sent
                if writable:
                    count = sock.send(pending or frame)
                    pending = (pending or frame)[count:]
                    sent += count
            except (BrokenPipeError, ConnectionResetError):
                break
            if answered is not None and time.monotonic() - answered > LINGER_SECONDS + 10:
                outcome.error = "still open"
                break
        else:
            outcome.error = f"{cap} bytes sent, no answer"
    if answered is not None:
        outcome.closed_after = time.monotonic() - answered
        outcome.status, outcome.body = _status_and_body(answer)
    return outcome


def declare_ten_gb(stack: Stack, proxy: Proxy, route: Route) -> tuple[int, float]:
    """The status of a request that declares a 10 GB body and sends none of it, and how soon it came."""
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(_request_head(stack, route, f"Content-Length: {TEN_GB}"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, f"{route.path}: closed without an answer"
            answer += data
        return int(answer.split(b" ", 2)[1]), time.monotonic() - started


def trickle_headers(proxy: Proxy, results: list[tuple[bytes, float]]) -> None:
    """A request line and headers that never end, a byte every 0.2 s: what comes back, and when."""
    request = b"POST /predict HTTP/1.1\r\nHost: faults\r\nContent-Type: application/json\r\n"
    request += b"X-Padding: " + b"a" * int(HEADER_TIMEOUT_SECONDS * 5)  # outlasts the deadline
    with socket.create_connection(_address(proxy.url), timeout=HEADER_TIMEOUT_SECONDS + 10) as sock:
        started = time.monotonic()
        answer = b""
        try:
            for byte in request:
                sock.send(bytes([byte]))
                if select.select([sock], [], [], 0.2)[0]:
                    break
            answer = sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        results.append((answer, time.monotonic() - started))


def send_nothing(proxy: Proxy, results: list[tuple[bytes, float]]) -> None:
    with socket.create_connection(_address(proxy.url), timeout=HEADER_TIMEOUT_SECONDS + 10) as sock:
        started = time.monotonic()
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
        results.append((answer, time.monotonic() - started))


def test_slow_and_oversized_clients_do_not_hold_the_service(stack: Stack, proxy: Proxy) -> None:
    routes = body_routes(stack)
    assert {r.path for r in routes} >= {"/predict", "/predict/csv", "/token", "/train", "/users"}
    pid = stack.api.process.pid
    with Load(proxy.url, stack.user) as load:
        calm = time.monotonic()
        before = load.wait_for(100, calm)
        baseline = percentile([o.seconds for o in before], 0.5)
        memory = reset_peak_rss(pid)

        abuse = time.monotonic()
        endless: list[Endless] = []
        slow: list[tuple[bytes, float]] = []
        silent: list[tuple[bytes, float]] = []
        threads = [
            threading.Thread(target=lambda r=route: endless.append(send_for_ever(stack, proxy, r)))
            for route in routes
        ]
        threads += [threading.Thread(target=trickle_headers, args=(proxy, slow)) for _ in range(SLOW_CLIENTS)]
        threads.append(threading.Thread(target=send_nothing, args=(proxy, silent)))
        for thread in threads:
            thread.start()
        declared = {route.path: declare_ten_gb(stack, proxy, route) for route in routes}
        for thread in threads:
            thread.join(timeout=max(LINGER_SECONDS, HEADER_TIMEOUT_SECONDS) + 60)
        over = time.monotonic()
        during = [o for o in load.since(abuse) if o.started < over]
        grown = status_bytes(pid, "VmHWM") - memory

    # A declared 10 GB body: 413 at once, before a byte of it is read.
    for path, (status, seconds) in declared.items():
        assert status == 413 and seconds < 2, (path, status, seconds)
    # An endless chunked body: 413 once past its limit, then the connection closed within the
    # proxy's lingering_time.
    assert len(endless) == len(routes)
    for outcome in endless:
        limit = refused_past(outcome.route)
        assert outcome.error is None and outcome.status == 413, outcome
        detail = f"request body too large (limit {limit} bytes)"
        assert outcome.body in ({"detail": detail}, {"error": detail}), outcome.body
        assert outcome.sent_when_answered is not None
        assert outcome.sent_when_answered <= limit + IN_FLIGHT, outcome
        assert outcome.closed_after is not None and outcome.closed_after < LINGER_SECONDS + 5, outcome
    # Headers a byte at a time, or nothing at all: the connection closed at client_header_timeout.
    # nginx closes it without an answer (it logs a 408): no byte goes to a client that sends none.
    for answer, seconds in [*slow, *silent]:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        assert HEADER_TIMEOUT_SECONDS - 0.5 < seconds < HEADER_TIMEOUT_SECONDS + 3, seconds
    assert len(slow) == SLOW_CLIENTS and len(silent) == 1
    # What an operator sees: the slow ones in the proxy's access log (the silent one sent no request).
    assert proxy.statuses().count(408) >= SLOW_CLIENTS
    # Meanwhile the predictions went on, as fast as before (to within the noise of a shared machine).
    assert during and not [o for o in during if o.lost]
    typical = percentile([o.seconds for o in during], 0.5)
    assert typical < max(5 * baseline, baseline + 0.05), (baseline, typical)
    # A JSON body is held whole until its limit: the bound is those limits, at once, and some room.
    bound = sum(route.limit for route in routes) + 64 * MiB
    assert grown < bound, f"peak RSS grew by {grown / MiB:.0f} MiB, over {bound / MiB:.0f} MiB"
    record("slow and oversized clients", during, None)
