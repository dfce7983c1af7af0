"""The served-model swap, the model store and the serving pointer, without HTTP: what a reload, a
rollback and another replica's change do to ServingState."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.adapters.model_store import ModelStore
from app.core.artifacts import MODEL_FILE
from app.core.loading import ChecksumMismatch, ModelLoadError
from app.core.versions import UnknownVersion
from app.db.pointer import DatabasePointer
from app.db.session import Database
from app.serving.state import ServingState
from tests.support.models import write_model


def _state(tmp_path: Path, model_dir: str = "models") -> ServingState:
    database = Database(f"sqlite:///{tmp_path}/predictor.db")
    database.migrate()
    store = ModelStore.from_url(str(tmp_path / "versions"), tmp_path / "cache")
    return ServingState(
        tmp_path / model_dir, max_rows=10, drift=None, store=store, pointer=DatabasePointer(database.session)
    )


def test_start_up_serves_model_dir_and_records_it_as_a_version(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    state = _state(tmp_path)
    state.load_initial()
    assert state.current is not None and state.current.version == "v1"
    assert [version for version, _ in state.store.versions()] == ["v1"]
    pointer = state.pointer.get()
    assert pointer is not None and pointer.version == "v1"


def test_a_missing_model_leaves_no_model_and_says_why(tmp_path: Path):
    state = _state(tmp_path)
    state.load_initial()
    assert state.current is None
    assert state.error is not None and "train a model first" in state.error


def test_a_refused_reload_keeps_the_old_model_serving(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    state = _state(tmp_path)
    state.load_initial()
    before = state.current
    (tmp_path / "models" / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        state.reload()
    assert state.current is before


def test_rollback_serves_a_stored_version_and_moves_the_pointer(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    state = _state(tmp_path)
    state.load_initial()
    write_model(tmp_path / "models", version="v2")
    assert state.reload().version == "v2"
    assert state.serve_version("v1", reason="rollback by test").version == "v1"
    pointer = state.pointer.get()
    assert pointer is not None and (pointer.version, pointer.reason) == ("v1", "rollback by test")
    with pytest.raises(UnknownVersion):
        state.serve_version("v9", reason="no such version")
    assert state.current is not None and state.current.version == "v1"


def test_another_replica_follows_the_pointer(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    first, second = _state(tmp_path), _state(tmp_path, model_dir="no-models-here")
    first.load_initial()
    write_model(tmp_path / "models", version="v2")
    first.reload()
    second.load_initial()  # no model folder of its own: serves what the pointer names
    assert second.current is not None and second.current.version == "v2"
    first.serve_version("v1", reason="rollback in replica one")
    second.sync()
    assert second.current is not None and second.current.version == "v1"


def test_a_replica_with_nothing_published_says_how_to_get_a_model(tmp_path: Path):
    state = _state(tmp_path, model_dir="empty")
    state.load_initial()
    assert state.current is None
    assert state.error is not None and "models publish --serve" in state.error


def test_readers_see_the_old_or_the_new_model_never_a_half_loaded_one(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    state = _state(tmp_path)
    state.load_initial()
    write_model(tmp_path / "models", version="v2")
    seen: list[str | None] = []
    done = threading.Event()

    def read() -> None:  # records what it sees: an assert in this thread would not fail the test
        while not done.is_set():
            current = state.current
            seen.append(current.version if current is not None else None)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            state.reload()
            state.serve_version("v1", reason="back")
    finally:
        done.set()
        reader.join()
    assert seen and set(seen) <= {"v1", "v2"}  # never None, never anything half-made


def test_a_broken_stored_version_is_refused_and_the_current_one_serves(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    state = _state(tmp_path)
    state.load_initial()
    write_model(tmp_path / "models", version="v2")
    state.reload()
    (tmp_path / "versions" / "v1" / MODEL_FILE).write_bytes(b"broken")
    with pytest.raises(ModelLoadError):
        state.serve_version("v1", reason="rollback")
    assert state.current is not None and state.current.version == "v2"
