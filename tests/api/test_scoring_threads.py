"""Large or slow requests are scored in worker threads, but never more at once than the process has
cores (inference.SCORING_THREADS): more would only queue for the GIL, at a cost in CPU and tail."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving import inference
from app.serving.predictor import Predictor
from tests.support.models import IRIS_FEATURES

Headers = dict[str, str]


def test_no_more_requests_are_scored_at_once_than_there_are_scoring_threads(
    settings_factory, user_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "SCORING_THREADS", 2)
    running, most = 0, 0
    lock = threading.Lock()
    infer = Predictor.infer

    def slow_infer(self: Predictor, matrix):  # type: ignore[no-untyped-def]
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # the GIL is free meanwhile, as during a model call
        with lock:
            running -= 1
        return infer(self, matrix)

    monkeypatch.setattr(Predictor, "infer", slow_infer)
    row = dict.fromkeys(IRIS_FEATURES, 5.0)
    body = {"instances": [row] * 400}  # past INLINE_BODY_BYTES: scored off the event loop
    with TestClient(create_app(settings_factory(max_batch_rows=1000))) as client:
        assert client.app.state.services.scoring.total_tokens == 2  # type: ignore[attr-defined]
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: client.post("/predict", json=body, headers=user_headers), range(8))
            )
    assert [a.status_code for a in answers] == [200] * 8
    assert most == 2
