"""CPU per request without the network: our app and the ceiling, called as ASGI apps in one process.

    python -m bench.inprocess [--model-dir models] [--requests 2000] [--rounds 5] [--profile]

wrk's figures include uvicorn's parsing, the socket and wrk itself on the same two cores; this
drives the apps directly (`await app(scope, receive, send)`), so what is left is the app's own
work per request: ours with auth, metrics, drift and the access log on (written to /dev/null),
against bench/ceiling.py's bare FastAPI app. Rounds alternate the two so both see the same
machine; the figures are the median round's CPU time per request, and the ratio ceiling / ours.
`--profile` prints cProfile's busiest functions for our one-row /predict (`--profile-rows '100 rows'`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import ceiling

Call = Callable[[], Awaitable[int]]
PASSWORD = "bench-inprocess-password"  # noqa: S105 - the throwaway app's admin


def report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def scope(method: str, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if body:
        raw.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call_app(app: Any, template: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    """One request: the answer's status and body."""
    status: list[int] = []
    answer = bytearray()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            answer.extend(message.get("body", b""))

    await app(dict(template), receive, send)
    return status[0], bytes(answer)


def request(
    app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Call:
    """One request to `app` as a coroutine factory that returns the answer's status."""
    template = scope(method, path, body, headers or {})

    async def call() -> int:
        status, _ = await call_app(app, template, body)
        return status

    return call


async def cpu_per_request(call: Call, requests: int) -> float:
    """Microseconds of this process's CPU per request, over `requests` calls."""
    started = time.process_time()
    for _ in range(requests):
        status = await call()
        if status != 200:
            raise SystemExit(f"bench.inprocess: a request answered {status}")
    return 1e6 * (time.process_time() - started) / requests


async def token(app: Any, username: str, password: str) -> str:
    body = f"username={username}&password={password}".encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    status, answer = await call_app(app, scope("POST", "/token", body, form), body)
    if status != 200:
        raise SystemExit(f"bench.inprocess: /token answered {status}")
    return str(json.loads(answer)["access_token"])


def our_app(model_dir: Path, scratch: Path, **overrides: Any) -> Any:
    from app.core.config import Settings
    from app.main import create_app

    settings = Settings(
        _env_file=None,
        secret_key="bench-inprocess-secret-key-of-enough-length",  # noqa: S106 - a throwaway app
        database_url=f"sqlite:///{scratch / 'users.db'}",
        model_dir=model_dir,
        model_store_url=str(scratch / "versions"),
        model_cache_dir=scratch / "cache",
        jobs_dir=scratch / "jobs",
        admin_username="bench",
        admin_password=PASSWORD,
        start_worker="false",
        **overrides,
    )
    return create_app(settings)


async def measure(args: argparse.Namespace) -> None:
    from app.core.artifacts import ModelMetadata

    metadata = ModelMetadata.read(args.model_dir)
    features = list(metadata.feature_names)
    row = {name: 1.0 for name in features}
    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as scratch:
        ours = our_app(args.model_dir, Path(scratch))
        bare = ceiling.create_app(features)
        async with ours.router.lifespan_context(ours):
            auth = {"authorization": f"Bearer {await token(ours, 'bench', PASSWORD)}"}
            json_type = {"content-type": "application/json"}
            one = json.dumps({"instances": [row]}).encode()
            hundred = json.dumps({"instances": [row] * 100}).encode()
            calls: dict[str, tuple[Call, Call | None]] = {
                "/health": (request(ours, "GET", "/health"), request(bare, "GET", "/health")),
                "/predict 1 row": (
                    request(ours, "POST", "/predict", one, auth | json_type),
                    request(bare, "POST", "/predict", one, json_type),
                ),
                "/predict 100 rows": (
                    request(ours, "POST", "/predict", hundred, auth | json_type),
                    request(bare, "POST", "/predict", hundred, json_type),
                ),
            }
            for ours_call, bare_call in calls.values():  # warm up: caches, first-call imports
                await cpu_per_request(ours_call, 200)
                if bare_call:
                    await cpu_per_request(bare_call, 200)
            rounds: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
            for _ in range(args.rounds):
                for name, (ours_call, bare_call) in calls.items():
                    rounds[name][0].append(await cpu_per_request(ours_call, args.requests))
                    if bare_call:
                        rounds[name][1].append(await cpu_per_request(bare_call, args.requests))
            report(f"{'route':<20} {'ours µs':>9} {'ceiling µs':>11} {'ceiling/ours':>13}")
            for name, (our_times, bare_times) in rounds.items():
                mine, theirs = statistics.median(our_times), statistics.median(bare_times)
                report(f"{name:<20} {mine:>9.1f} {theirs:>11.1f} {theirs / mine:>12.2f}x")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await cpu_per_request(calls[f"/predict {args.profile_rows}"][0], args.requests)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(40)
                report(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--profile-rows", default="1 row", choices=["1 row", "100 rows"], help="the /predict to profile"
    )
    parser.add_argument(
        "--sort", default="tottime", help="cProfile's order for --profile: tottime, cumulative"
    )
    args = parser.parse_args()
    if not (args.model_dir / "model.json").is_file():
        raise SystemExit(f"bench.inprocess: no model in {args.model_dir}: `make train` first")
    # The access log stays on, written to /dev/null (a write per line, as to a server's stdout);
    # the report goes to stderr.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
