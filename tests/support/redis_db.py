"""A Redis database of each xdist worker's own, so tests that flush it never meet another worker's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

REDIS_ADDRESS = ("127.0.0.1", 6379)
# Databases 1..11 go to workers gw0..gw10; the fault suite's deployment (tests/faults) has its own.
FIRST_DB, LAST_DB = 1, 11
FAULTS_DB = 12


def worker_db() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    db = FIRST_DB + int(worker.removeprefix("gw"))
    if db > LAST_DB:
        raise RuntimeError(f"{worker}: Redis has no database left for it (run with fewer workers)")
    return db


def worker_redis_url() -> str:
    host, port = REDIS_ADDRESS
    return f"redis://{host}:{port}/{worker_db()}"


@contextlib.contextmanager
def scratch_redis() -> Iterator[str]:
    """This worker's Redis database, flushed before and after; skipped by the `redis` marker's
    check when no Redis answers, and fails here if it stops answering."""
    import redis

    url = worker_redis_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"Redis not reachable at {url}: {exc}")
    try:
        yield url
    finally:
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()
