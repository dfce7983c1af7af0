"""Each part the replica relies on fails while predictions run, and comes back: what the replica does
meanwhile, and how soon it is normal again, without a restart.

The load is a predict user's /predict requests (tests/support/load.py); none may be lost to a fault in
a part /predict does not need (the database, the model store, the model cache, the worker), and none
to Redis either, as rate limits fail open by default.
"""

from __future__ import annotations

import errno
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.adapters.model_store import ModelStore
from app.core.serving_pointer import ServingPointer
from app.core.versions import VersionRecord, now
from app.db.pointer import DatabasePointer
from app.db.session import Database
from tests.faults.conftest import Stack, record, recovery
from tests.support.models import write_model
from tests.support.paths import ROOT
from tests.support.servers import wait_until
from tests.support.tokens import ADMIN

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TOKEN_ANSWER_WITHIN = 5.0  # the bound for /token's 503 while the database is away
BACK_WITHIN = 10.0  # the bound for normal service once a part is back
LOGIN = {"username": ADMIN[0], "password": ADMIN[1]}


def _served_version(stack: Stack) -> str:
    return httpx.get(f"{stack.url}/health", timeout=5).json()["model_version"]


def _assert_none_lost(outcomes: list, during: str) -> None:
    lost = [o for o in outcomes if o.lost]
    assert outcomes, f"no predictions ran during {during}"
    assert not lost, f"{len(lost)} of {len(outcomes)} predictions lost during {during}: {lost[:3]}"


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_the_database_away(stack: Stack, mode: str) -> None:
    """Cut: nothing listens (refuse), or connections are accepted and never answered (hang)."""

    def back() -> bool:
        token = httpx.post(f"{stack.url}/token", data=LOGIN, timeout=15).status_code
        return token == 200 and httpx.get(f"{stack.url}/ready", timeout=15).status_code == 200

    with stack.load() as load:
        load.wait_for(10, time.monotonic())
        stack.database.cut(mode)
        cut = time.monotonic()
        started = time.monotonic()
        token = httpx.post(f"{stack.url}/token", data=LOGIN, timeout=15)
        answered = time.monotonic() - started
        assert token.status_code == 503 and token.json() == {
            "detail": "database unavailable: OperationalError"
        }
        assert answered < TOKEN_ANSWER_WITHIN, f"/token answered in {answered:.1f} s"
        ready = httpx.get(f"{stack.url}/ready", timeout=15)
        assert ready.status_code == 503 and ready.json()["detail"].startswith("database unavailable")
        load.wait_for(20, cut)  # predictions go on while it is away

        stack.database.restore()
        restored = time.monotonic()
        recovered = recovery(back, restored, BACK_WITHIN, "the database")
        outcomes = load.since(cut)
    _assert_none_lost(outcomes, f"the database cut ({mode})")
    record(f"database unreachable ({mode})", outcomes, recovered)


def test_redis_away(stack: Stack) -> None:
    """Rate limits fail open (predictions go on), revocation checks fail closed for admin tokens once
    the revocation list is older than REVOCATION_MAX_STALENESS_SECONDS (3 s here); each outage
    logged once, and shown in metrics."""

    def admin_status() -> int:
        return httpx.get(f"{stack.url}/users", headers=stack.admin, timeout=15).status_code

    logged_before = len(stack.log_lines())
    with stack.load() as load:
        load.wait_for(10, time.monotonic())
        stack.redis.cut("hang")
        cut = time.monotonic()
        wait_until(lambda: admin_status() == 503, 10, "admin tokens refused")
        refused = httpx.get(f"{stack.url}/users", headers=stack.admin, timeout=15)
        assert refused.status_code == 503 and "revocation" in refused.json()["detail"]
        assert stack.metric("predictor_rate_limit_store_up") == 0
        assert stack.metric("predictor_revocation_store_up") == 0
        load.wait_for(20, cut)

        stack.redis.restore()
        restored = time.monotonic()

        def back() -> bool:
            return (
                admin_status() == 200
                and stack.metric("predictor_rate_limit_store_up") == 1
                and stack.metric("predictor_revocation_store_up") == 1
            )

        recovered = recovery(back, restored, BACK_WITHIN, "Redis")
        outcomes = load.since(cut)
    _assert_none_lost(outcomes, "the Redis cut")
    # The limiter asks Redis once a second while it is away: the others do not wait out its timeout.
    slow = [o for o in outcomes if o.seconds > 1.5]
    assert len(slow) <= len(outcomes) * 0.1, f"{len(slow)} of {len(outcomes)} predictions over 1.5 s"
    messages = [line["msg"] for line in stack.log_lines()[logged_before:]]
    assert sum(m.startswith("rate limit store unreachable") for m in messages) == 1
    assert sum(m.startswith("revocation store unreadable") for m in messages) == 1
    assert "rate limit store answers again" in messages and "revocation store answers again" in messages
    record("Redis unreachable (hang)", outcomes, recovered)


def test_the_model_store_away(stack: Stack) -> None:
    """The replica serves what it has; a new version cannot be published, reloaded or rolled back to,
    and the answer names the store; /ready reports it. The store's return is noticed at the next look
    (WATCH_SECONDS, 1 s here), and the new version goes out then. (A version this replica has cached
    needs no store: rolling back to it works throughout.)"""

    def store_state() -> str:
        return httpx.get(f"{stack.url}/ready", timeout=15).json().get("model_store", "")

    def refused(answer: httpx.Response) -> bool:
        detail = answer.json()["detail"]
        return answer.status_code == 503 and detail.startswith(
            f"model store unavailable: model store {stack.store_url}"
        )

    served = _served_version(stack)
    with stack.load() as load:
        load.wait_for(10, time.monotonic())
        stack.store.cut("refuse")
        cut = time.monotonic()
        wait_until(lambda: store_state().startswith("unreachable: "), 10, "/ready reporting the store")
        assert stack.store_url in store_state()
        assert stack.metric("predictor_model_store_up") == 0

        write_model(stack.model_dir, version="v3")  # dvc repro's new model, on this replica
        reload = httpx.post(f"{stack.url}/model/reload", headers=stack.admin, timeout=60)
        assert refused(reload), reload.text
        rollback = httpx.post(
            f"{stack.url}/model/rollback", json={"version": "v3"}, headers=stack.admin, timeout=60
        )
        assert refused(rollback), rollback.text
        published = subprocess.run(
            [sys.executable, "-m", "app.cli", "models", "publish"],
            env=stack.env | {"MODEL_CACHE_DIR": str(stack.folder / "publisher-cache")},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode != 0 and stack.store_url in published.stderr, published.stderr
        assert _served_version(stack) == served
        load.wait_for(20, cut)

        stack.store.restore()
        restored = time.monotonic()
        recovered = recovery(lambda: store_state() == "ok", restored, BACK_WITHIN, "the model store")
        assert stack.metric("predictor_model_store_up") == 1
        reload = httpx.post(f"{stack.url}/model/reload", headers=stack.admin, timeout=60)
        assert reload.status_code == 200 and reload.json()["model_version"] == "v3", reload.text
        outcomes = load.since(cut)
    _assert_none_lost(outcomes, "the model store cut")
    record("model store unreachable (refuse)", outcomes, recovered)


def _fill(folder: Path, leave: int = 0) -> Path:
    """A file filling `folder`'s file system to the last block, then cut by `leave` bytes."""
    ballast = folder / ".ballast"  # a hidden name: never taken for a cached version
    block = b"\0" * 65536
    with ballast.open("wb") as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = ballast.stat().st_size
    with ballast.open("r+b") as out:
        out.truncate(max(0, size - leave))
    return ballast


@pytest.mark.root
def test_a_full_model_cache(stack: Stack) -> None:
    """A version that does not fit in the cache is refused (507, saying so), the old one serves on,
    nothing half-written is left; once room is made, the version the pointer names is served."""
    if stack.cache is None:
        pytest.skip("no tmpfs can be mounted here (needs root): the full disk cannot be made")
    write_model(stack.folder / "v2", version="v2")
    publisher = ModelStore.from_url(stack.store_url, stack.folder / "publisher-cache")
    publisher.publish(stack.folder / "v2", VersionRecord(origin="pipeline", recorded_at=now()))
    served = _served_version(stack)
    files = publisher._manifest("v2").files.values()  # what the replica will download
    needed = sum(entry.size for entry in files)
    page = 4096  # tmpfs allocates whole pages: a file takes its size rounded up
    in_pages = sum(math.ceil(entry.size / page) * page for entry in files)

    def rollback(version: str) -> httpx.Response:
        return httpx.post(
            f"{stack.url}/model/rollback", json={"version": version}, headers=stack.admin, timeout=60
        )

    def cached() -> list[str]:
        return sorted(p.name for p in stack.cache.iterdir() if p.name != ".ballast")  # type: ignore[union-attr]

    before = cached()

    def nothing_half_written() -> None:
        assert cached() == before  # no v2, no staging folder

    with stack.load() as load:
        start = time.monotonic()
        load.wait_for(10, start)
        # No room at all: refused before a byte is downloaded.
        ballast = _fill(stack.cache)
        refused = rollback("v2")
        assert refused.status_code == 507, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith(f"rollback refused: model cache {stack.cache} is full: version v2 needs")
        nothing_half_written()
        # Room by the bytes, not by the pages: the disk fills during the download.
        ballast.unlink()
        room = math.ceil(needed / page) * page
        assert room < in_pages, "the version's files would fit whole pages: no full disk mid-download"
        ballast = _fill(stack.cache, leave=room)
        assert needed <= shutil.disk_usage(stack.cache).free < in_pages
        refused = rollback("v2")
        assert refused.status_code == 507, refused.text
        assert "is full: version v2: No space left on device" in refused.json()["detail"]
        nothing_half_written()
        assert _served_version(stack) == served

        # Another replica points every replica at v2: this one waits for room, and says so.
        database = Database(stack.env["DATABASE_URL"])
        try:
            DatabasePointer(database.session).set(ServingPointer(version="v2", since=now(), reason="faults"))
        finally:
            database.dispose()
        wait_until(lambda: stack.metric("predictor_model_cache_full") == 1, 10, "model_cache_full")
        assert _served_version(stack) == served
        ballast.unlink()
        freed = time.monotonic()
        recovered = recovery(lambda: _served_version(stack) == "v2", freed, BACK_WITHIN, "room in the cache")
        assert stack.metric("predictor_model_cache_full") == 0
        outcomes = load.since(start)
        assert rollback(served).status_code == 200
    _assert_none_lost(outcomes, "the full model cache")
    record("model cache disk full", outcomes, recovered)


def test_a_model_file_corrupted_while_serving(stack: Stack) -> None:
    """MODEL_DIR's model file damaged: reload refused (409, naming it), the loaded model serves on.
    The served version's cached copy damaged: it serves from memory, and is downloaded afresh when
    asked for again."""
    served = _served_version(stack)
    onnx = stack.model_dir / "model.onnx"
    original = onnx.read_bytes()
    with stack.load() as load:
        start = time.monotonic()
        load.wait_for(10, start)
        onnx.write_bytes(original[:-64] + b"\0" * 64)
        try:
            reload = httpx.post(f"{stack.url}/model/reload", headers=stack.admin, timeout=60)
            assert reload.status_code == 409 and "model.onnx" in reload.json()["detail"], reload.text
            assert _served_version(stack) == served
        finally:
            onnx.write_bytes(original)
        restored = time.monotonic()
        assert httpx.post(f"{stack.url}/model/reload", headers=stack.admin, timeout=60).status_code == 200
        recovered = time.monotonic() - restored

        if stack.cache is not None:
            cached = stack.cache / served / "model.onnx"
            if not cached.exists():  # run on its own: no earlier test had the replica fetch it
                fetched = httpx.post(
                    f"{stack.url}/model/rollback", json={"version": served}, headers=stack.admin, timeout=60
                )
                assert fetched.status_code == 200, fetched.text
            intact = cached.read_bytes()
            cached.write_bytes(intact[:-64] + b"\0" * 64)
            again = httpx.post(
                f"{stack.url}/model/rollback", json={"version": served}, headers=stack.admin, timeout=60
            )
            assert again.status_code == 200, again.text
            assert cached.read_bytes() == intact  # downloaded again, verified
        load.wait_for(len(load.since(start)) + 10, start)
        outcomes = load.since(start)
    _assert_none_lost(outcomes, "the corrupted model file")
    record("model file corrupted", outcomes, recovered)
