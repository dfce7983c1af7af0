"""python -m app.cli models publish: models/ into the store, and with --serve through the promotion gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.adapters.model_store import ModelStore
from app.cli import cli
from app.core.artifacts import METADATA_FILE, ModelMetadata, write_json_atomic
from app.core.config import get_settings
from app.db.pointer import DatabasePointer
from app.db.session import Database
from tests.support.models import write_model
from tests.support.tokens import ADMIN, SECRET


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder without data/processed: the gate cannot score a champion on it."""
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "DATABASE_URL": f"sqlite:///{tmp_path}/predictor.db",
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_STORE_URL": str(tmp_path / "store"),
        "SECRET_KEY": SECRET,
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def scored(model_dir: Path, score: float) -> Path:
    """The test metric train records, which the gate compares."""
    meta = ModelMetadata.read(model_dir)
    write_json_atomic(model_dir / METADATA_FILE, meta.model_copy(update={"metrics": {meta.metric: score}}))
    return model_dir


def publish(*flags: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", "publish", *flags])
    return result.exit_code, result.output


def serving(project: Path) -> str | None:
    database = Database(f"sqlite:///{project}/predictor.db")
    database.migrate()
    try:
        pointer = DatabasePointer(database.session).get()
    finally:
        database.dispose()
    return pointer.version if pointer else None


def test_publish_serve_and_the_gate(project: Path) -> None:
    code, output = publish()
    assert code == 1 and "holds no model that loads" in output and "dvc repro" in output

    write_model(project / "models", version="v1")
    code, output = publish()
    assert code == 0 and output.strip() == f"published to {project / 'store'}: v1"
    assert serving(project) is None  # published, not served
    assert publish()[1].startswith("already in ")

    code, output = publish("--serve")
    assert code == 0, output
    assert "serving v1 on every replica" in output and "no other version serving" in output
    assert serving(project) == "v1"

    # A challenger the gate cannot compare (no test split here): kept as rejected, v1 keeps serving.
    write_model(project / "models", version="v2")
    code, output = publish("--serve")
    assert code == 1 and "has no test f1_macro to pass the gate with" in output
    scored(project / "models", 0.99)
    code, output = publish("--serve")
    assert code == 0, output
    assert "kept as a rejected challenger: not comparable" in output and "still serving v1" in output
    assert serving(project) == "v1"
    store = ModelStore.from_url(str(project / "store"), project / "cache")
    record = store.record("v2")
    assert record is not None and record.status == "rejected" and record.gate is not None

    code, output = publish("--serve", "--force")
    assert code == 0 and "--force, gate skipped" in output
    assert serving(project) == "v2"


def test_force_alone_is_refused(project: Path) -> None:
    code, output = publish("--force")
    assert code == 2 and "--serve" in output
