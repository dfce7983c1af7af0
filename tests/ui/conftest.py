"""A real API (python -m app.serve) on a free port, with a tiny model with candidates, for the UI tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.adapters.model_store import ModelStore
from app.core.artifacts import METADATA_FILE, ModelMetadata, write_json_atomic
from app.core.versions import VersionRecord, now
from tests.support.models import add_candidate, write_model
from tests.support.paths import ROOT
from tests.support.servers import api_server
from tests.support.tokens import USER


@pytest.fixture(scope="session")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("ui-api")
    write_model(folder / "models", "iris", version="2026-11-23T08-00-00")
    score_champion(folder / "models", 0.96)
    add_candidate(folder / "models", "decision_tree", 0.93)
    add_candidate(folder / "models", "knn", 0.95)
    # An older version in the store, to roll back to.
    write_model(folder / "older", "iris", version="2026-11-22T08-00-00")
    ModelStore.from_url(str(folder / "versions"), folder / "cache").publish(
        folder / "older", VersionRecord(origin="pipeline", recorded_at=now())
    )
    # A job started from the UI tests fails fast: its data source is not there.
    params = {
        "data": {"source": "data/input/missing.csv", "target": "species"},
        "train": {"candidates": {"logistic_regression": {}}},
    }
    (folder / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    settings = {
        "MODEL_STORE_URL": str(folder / "versions"),
        "TRAIN_PARAMS": str(folder / "params.yaml"),
        "ACCESS_TOKEN_EXPIRE_MINUTES": "5",
        "PYTHONPATH": str(ROOT),
    }
    with api_server(folder, folder / "models", **settings) as api:
        subprocess.run(
            [sys.executable, "-m", "app.cli", "users", "create", USER[0], "--scope", "predict"],
            env=api.env | {"PREDICTOR_NEW_PASSWORD": USER[1]},
            cwd=folder,
            check=True,
            capture_output=True,
        )
        yield api.url


def score_champion(model_dir: Path, score: float) -> None:
    """Give the tiny model the test metric train would have recorded (the UI shows it)."""
    meta = ModelMetadata.read(model_dir)
    champion = meta.candidates[0].model_copy(update={"metrics": {meta.metric: score}})
    write_json_atomic(
        model_dir / METADATA_FILE,
        meta.model_copy(update={"metrics": {meta.metric: score}, "candidates": [champion]}),
    )


@pytest.fixture
def ui_env(api_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The UI reads API_URL like any setting; its cached settings are cleared for each test."""
    from app.ui.settings import get_ui_settings

    monkeypatch.setenv("API_URL", api_url)
    get_ui_settings.cache_clear()
    yield api_url
    get_ui_settings.cache_clear()
