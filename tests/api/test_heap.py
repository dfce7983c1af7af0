"""What start-up built is out of the cycle collector's sight while the app serves (no full collection
walks it between two requests: that was the p99 at c=32), and the collector is on again, though
python -m app.serve turned it off for the start-up. Shutdown gives it all back."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app


def test_start_up_is_frozen_while_serving_and_thawed_at_shutdown(settings: Settings) -> None:
    gc.disable()  # as python -m app.serve leaves it for the start-up
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/health").status_code == 200
            assert gc.isenabled()
            assert gc.get_freeze_count() > 10_000  # the app, its imports and the model
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
        gc.unfreeze()
