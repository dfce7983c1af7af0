"""The shadow without HTTP: ShadowRunner's bounded queue, agreement counts, failures and what it logs;
ServingState following the pointer's shadow."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.adapters.model_store import ModelStore
from app.core.artifacts import Feature, ModelMetadata
from app.core.versions import UnknownVersion, VersionRecord, now
from app.db.pointer import DatabasePointer
from app.db.session import Database
from app.serving.predictor import Answers, Predictor
from app.serving.shadow import AGREEMENT_RTOL, NICENESS, ShadowRefused, ShadowRunner, mismatch
from app.serving.state import ServingState
from app.serving.tracing import Tracing
from app.serving.validation import RowError
from tests.support.models import write_model

CLASSES = ("setosa", "versicolor", "virginica")


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    folder = tmp_path_factory.mktemp("champion")
    write_model(folder, "iris", version="champion")
    return Predictor.load(folder, max_rows=100)


@dataclass
class FakeShadow:
    """A shadow model answering `answer(matrix)`, optionally held at `gate` until a test opens it."""

    metadata: ModelMetadata
    answer: Callable[[np.ndarray], Answers]
    gate: threading.Event | None = None
    calls: list[int] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.metadata.version

    def infer(self, matrix: np.ndarray) -> Answers:
        self.calls.append(len(matrix))
        if self.gate is not None:
            self.gate.wait(10)
        return self.answer(matrix)


@dataclass
class FakeLog:
    recorded: list[tuple[str, str, list[str], int]] = field(default_factory=list)

    def record_shadow(
        self, version: str, record: str, answers: Answers, agreed: int, difference: float | None
    ) -> None:
        labels = [CLASSES[i] for i in answers.label_index.tolist()] if answers.label_index is not None else []
        self.recorded.append((version, record, labels, agreed))


def labels_of(*labels: str) -> Answers:
    return Answers(CLASSES, np.array([CLASSES.index(label) for label in labels]))


def constant(label: str) -> Callable[[np.ndarray], Answers]:
    return lambda matrix: labels_of(*[label] * len(matrix))


def shadow_of(champion: Predictor, answer: Callable[[np.ndarray], Answers], **kwargs: object) -> FakeShadow:
    version = f"shadow-{uuid.uuid4().hex[:8]}"  # its own metric series
    return FakeShadow(champion.metadata.model_copy(update={"version": version}), answer, **kwargs)  # type: ignore[arg-type]


def rows(version: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "predictor_shadow_rows_total", {"model_version": version, "result": result}
    )
    return value or 0.0


def counts(version: str) -> dict[str, float]:
    return {r: rows(version, r) for r in ("agreed", "disagreed", "dropped", "failed")}


def iris_rows(n: int) -> np.ndarray:
    return np.tile([[5.1, 3.5, 1.4, 0.2]], (n, 1)).astype(np.float64)


def offer(
    runner: ShadowRunner,
    champion: Predictor,
    matrix: np.ndarray,
    logged: np.ndarray | None = None,
    answers: Answers | None = None,
) -> list[str]:
    answers = answers if answers is not None else champion.infer(matrix)
    ids = [f"{uuid.uuid4().hex[:16]}-{i}" for i in range(len(matrix))]
    runner.offer(champion, matrix, answers, ids, logged)
    return ids


def test_agreement_is_counted_per_row_and_the_arrays_are_left_as_they_were(champion: Predictor):
    # setosa for the first row, versicolor for the second: the champion says setosa to both.
    shadow = shadow_of(champion, lambda m: labels_of("setosa", "versicolor"))
    runner = ShadowRunner(shadow, None, queue_batches=4).start()  # type: ignore[arg-type]
    matrix = iris_rows(2)
    answers = champion.infer(matrix)
    before = (matrix.copy(), answers.label_index.copy(), answers.probabilities.copy())  # type: ignore[union-attr]
    try:
        offer(runner, champion, matrix, answers=answers)
        assert runner.flush()
    finally:
        runner.stop()
    assert counts(shadow.version) == {"agreed": 1, "disagreed": 1, "dropped": 0, "failed": 0}
    assert np.array_equal(matrix, before[0])
    assert np.array_equal(answers.label_index, before[1])  # type: ignore[arg-type]
    assert np.array_equal(answers.probabilities, before[2])  # type: ignore[arg-type]
    assert "labels" not in vars(answers)  # not even the champion's cached labels were made here
    assert (
        REGISTRY.get_sample_value(
            "predictor_shadow_inference_duration_seconds_count", {"model_version": shadow.version}
        )
        == 1
    )


def test_labels_are_compared_by_name_when_the_classes_are_in_another_order(champion: Predictor):
    reordered = tuple(reversed(CLASSES))
    # Index 2 of the reversed classes is setosa, what the champion says; index 0 is virginica.
    shadow = shadow_of(champion, lambda m: Answers(reordered, np.array([2, 0])))
    runner = ShadowRunner(shadow, None, queue_batches=4).start()  # type: ignore[arg-type]
    try:
        offer(runner, champion, iris_rows(2))
        assert runner.flush()
    finally:
        runner.stop()
    assert counts(shadow.version) == {"agreed": 1, "disagreed": 1, "dropped": 0, "failed": 0}


def test_a_full_queue_drops_and_counts_without_blocking(champion: Predictor):
    gate = threading.Event()
    shadow = shadow_of(champion, constant("setosa"), gate=gate)
    runner = ShadowRunner(shadow, None, queue_batches=2).start()  # type: ignore[arg-type]
    try:
        offer(runner, champion, iris_rows(1))  # taken by the thread, which waits at the gate
        deadline = time.monotonic() + 5
        while not shadow.calls and time.monotonic() < deadline:
            time.sleep(0.005)
        assert shadow.calls == [1]
        waits = []
        for _ in range(10):
            started = time.perf_counter()
            offer(runner, champion, iris_rows(3))
            waits.append(time.perf_counter() - started)
        assert max(waits) < 0.05  # the slow shadow never held a request
        assert rows(shadow.version, "dropped") == 8 * 3  # two batches queued, eight dropped
        gate.set()
        assert runner.flush()
    finally:
        gate.set()
        runner.stop()
    assert counts(shadow.version) == {"agreed": 1 + 2 * 3, "disagreed": 0, "dropped": 24, "failed": 0}
    assert shadow.calls == [1, 6]  # the two queued batches were scored in one call


def test_a_failing_shadow_is_counted_never_raised(champion: Predictor):
    def refuse(matrix: np.ndarray) -> Answers:
        if len(matrix) == 2:
            raise RowError([{"row": 1, "field": None, "msg": "no finite answer"}])
        if len(matrix) == 4:
            raise RuntimeError("broken")  # the coalesced call fails with the bad batch in it
        return labels_of(*["setosa"] * len(matrix))

    gate = threading.Event()
    shadow = shadow_of(champion, refuse, gate=gate)
    runner = ShadowRunner(shadow, None, queue_batches=8).start()  # type: ignore[arg-type]
    try:
        offer(runner, champion, iris_rows(1))  # holds the thread while the next three queue
        deadline = time.monotonic() + 5
        while not shadow.calls and time.monotonic() < deadline:
            time.sleep(0.005)
        offer(runner, champion, iris_rows(1))
        offer(runner, champion, iris_rows(2))  # a batch the shadow cannot answer
        offer(runner, champion, iris_rows(1))
        gate.set()
        assert runner.flush()
    finally:
        gate.set()
        runner.stop()
    # The bad batch fails its own two rows only; the others are scored one by one after it.
    assert counts(shadow.version) == {"agreed": 3, "disagreed": 0, "dropped": 0, "failed": 2}
    assert shadow.calls == [1, 4, 1, 2, 1]


def test_only_the_logged_rows_go_to_the_prediction_log(champion: Predictor):
    shadow = shadow_of(champion, lambda m: labels_of(*(["virginica", "setosa"] * len(m))[: len(m)]))
    log = FakeLog()
    runner = ShadowRunner(shadow, log, queue_batches=4).start()  # type: ignore[arg-type]
    try:
        all_ids = offer(runner, champion, iris_rows(2), logged=None)
        some_ids = offer(runner, champion, iris_rows(3), logged=np.array([True, False, True]))
        offer(runner, champion, iris_rows(2), logged=np.array([False, False]))
        assert runner.flush()
    finally:
        runner.stop()
    # One per call with a logged row, named by the call's first id: the logged rows' answers only.
    recorded = [(record, labels) for version, record, labels, _ in log.recorded if version == shadow.version]
    assert recorded == [(all_ids[0], ["virginica", "setosa"]), (some_ids[0], ["virginica", "virginica"])]


def test_regression_answers_agree_within_the_relative_tolerance(tmp_path: Path):
    write_model(tmp_path / "colors", "colors", version="colors-champion")
    colors = Predictor.load(tmp_path / "colors", max_rows=10)
    matrix = np.array([["red", 2.0], ["blue", 5.0], ["green", 8.0]], dtype=colors.schema.dtype)
    values = colors.infer(matrix).values
    assert values is not None
    nudged = values * np.array([1 + AGREEMENT_RTOL / 2, 1 + 3 * AGREEMENT_RTOL, 1.0])
    shadow = shadow_of(colors, lambda m: Answers((), values=nudged))
    runner = ShadowRunner(shadow, None, queue_batches=4).start()  # type: ignore[arg-type]
    try:
        offer(runner, colors, matrix)
        assert runner.flush()
    finally:
        runner.stop()
    assert counts(shadow.version) == {"agreed": 2, "disagreed": 1, "dropped": 0, "failed": 0}


def test_rows_of_a_champion_with_other_features_are_counted_as_failed(champion: Predictor):
    other = champion.metadata.model_copy(
        update={"version": f"other-{uuid.uuid4().hex[:8]}", "features": champion.metadata.features[:3]}
    )
    shadow = FakeShadow(other, constant("setosa"))
    assert mismatch(champion.metadata, other) is not None
    assert mismatch(champion.metadata, champion.metadata) is None
    regression = other.model_copy(update={"task": "regression", "features": champion.metadata.features})
    assert "regression" in (mismatch(champion.metadata, regression) or "")
    renamed = [Feature(name=f"x{i}", type="numeric") for i in range(4)]
    assert mismatch(champion.metadata, other.model_copy(update={"features": renamed})) is not None
    runner = ShadowRunner(shadow, None, queue_batches=4).start()  # type: ignore[arg-type]
    try:
        offer(runner, champion, iris_rows(2))
        assert runner.flush()
    finally:
        runner.stop()
    assert counts(other.version)["failed"] == 2 and shadow.calls == []


def test_the_champion_itself_is_not_compared(champion: Predictor):
    runner = ShadowRunner(champion, None, queue_batches=4).start()
    before = counts(champion.version)
    try:
        offer(runner, champion, iris_rows(2))
        assert runner.flush()
    finally:
        runner.stop()
    assert counts(champion.version) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_the_thread_runs_at_a_lower_priority(champion: Predictor):
    runner = ShadowRunner(shadow_of(champion, constant("setosa")), None, queue_batches=1).start()  # type: ignore[arg-type]
    try:
        offer(runner, champion, iris_rows(1))
        assert runner.flush()
        thread = next(t for t in threading.enumerate() if t.name == f"shadow-{runner.version}")
        assert thread.native_id is not None
        assert (
            os.getpriority(os.PRIO_PROCESS, thread.native_id) == os.getpriority(os.PRIO_PROCESS, 0) + NICENESS
        )
    finally:
        runner.stop()
    assert not thread.is_alive()


# --- ServingState: the pointer names the shadow, every replica follows it ---


def _replica(tmp_path: Path, model_dir: str = "models") -> ServingState:
    database = Database(f"sqlite:///{tmp_path}/predictor.db")
    database.migrate()
    store = ModelStore.from_url(str(tmp_path / "versions"), tmp_path / "cache")
    state = ServingState(
        tmp_path / model_dir, max_rows=10, drift=None, store=store, pointer=DatabasePointer(database.session)
    )
    state.load_initial()
    state.shadows.tracing = Tracing(None)  # as trace_with() does, without its start-up thread
    return state


def _two_versions(tmp_path: Path) -> ServingState:
    """v1 recorded and served, v2 in the store beside it."""
    write_model(tmp_path / "models", version="v1")
    first = _replica(tmp_path)
    write_model(tmp_path / "v2", version="v2")
    first.store.publish(tmp_path / "v2", VersionRecord(origin="pipeline", recorded_at=now()))
    return first


def test_a_replica_follows_the_shadow_and_a_change_of_champion_keeps_it(tmp_path: Path):
    first = _two_versions(tmp_path)
    second = _replica(tmp_path, model_dir="no-models-here")
    runner = first.start_shadow("v2")
    assert first.shadows.tracing is not None and first.shadows.tracing.shadow is runner
    second.sync()
    assert second.shadow is not None and second.shadow.version == "v2"
    assert second.shadows.tracing is not None and second.shadows.tracing.shadow is second.shadow

    first.serve_version("v1", reason="rollback in replica one")  # moves the champion only
    pointer = first.pointer.get()
    assert pointer is not None and pointer.shadow_version == "v2"
    second.sync()
    assert second.shadow is not None and second.shadow.version == "v2"

    assert first.stop_shadow() == "v2"
    assert first.shadows.tracing.shadow is None
    second.sync()
    assert second.shadow is None and second.shadows.tracing.shadow is None
    assert first.stop_shadow() is None


def test_a_pointer_read_before_this_replica_moved_the_shadow_does_not_undo_it(tmp_path: Path):
    state = _two_versions(tmp_path)
    stale = state.pointer.get()  # read by the watch just before an admin's POST /model/shadow
    read_at = time.monotonic() - 0.001
    state.start_shadow("v2")
    state.shadows.follow(stale, read_at)
    assert state.shadow is not None and state.shadow.version == "v2"


def test_a_shadow_that_becomes_the_champion_stops(tmp_path: Path):
    state = _two_versions(tmp_path)
    with pytest.raises(ShadowRefused, match="is the champion"):
        state.start_shadow("v1")
    with pytest.raises(UnknownVersion):
        state.start_shadow("v9")
    state.start_shadow("v2")
    state.serve_version("v2", reason="promoted")
    state.sync()
    assert state.shadow is None  # the pointer still names it: nothing left to compare
