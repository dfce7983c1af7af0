"""The prediction log's records: they decode back to the rows logged, feedback finds a sampled row in
its record (and refuses one sampled out), the sweep empties both tables, and migration 0007 moves
the per-row log of 0006 into records without losing a row or a label (and back)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, func, select, text

from app.core.prediction_records import StoredRecord, encode_calls
from app.db.models import PredictionBatchRow, PredictionLogRow
from app.db.prediction_log import PredictionLogStore, Truth
from app.db.session import MIGRATIONS_DIR, Database
from app.serving.prediction_log import PredictionLog, _Call
from app.serving.predictor import Answers

NAMES = ("a", "b", "c")


class _Predictor:
    """What the log reads of a predictor: its version and its features' names."""

    def __init__(self, names: tuple[str, ...] = NAMES) -> None:
        self.version = "v1"
        self.metadata = type("Metadata", (), {"feature_names": list(names)})()


class _Sink:
    def __init__(self) -> None:
        self.records: list[list[Any]] = []

    def insert_rows(self, records: Any, shadow_answers: Any = ()) -> None:
        self.records += records

    def sweep(self, before: float) -> int:
        return 0


class _Draws:
    """A sampling draw the test chooses: these numbers, in order."""

    def __init__(self, *numbers: float) -> None:
        self.numbers = np.array(numbers)

    def random(self, rows: int) -> np.ndarray:
        return self.numbers[:rows]


def _classified(rows: int) -> Answers:
    probabilities = np.random.default_rng(1).dirichlet(np.ones(3), size=rows).round(6)
    return Answers(("x", "y", "z"), label_index=probabilities.argmax(axis=1), probabilities=probabilities)


def _written(matrix: np.ndarray, answers: Answers, ids: list[str], **log: Any) -> StoredRecord:
    draws = log.pop("draws", None)
    sink = _Sink()
    prediction_log = PredictionLog(sink, buffer_rows=10_000, retention_days=30, flush_seconds=0.01, **log)
    if draws is not None:
        prediction_log._random = draws  # type: ignore[assignment]
    stop = prediction_log.start()
    try:
        prediction_log.record(_Predictor(tuple(NAMES[: matrix.shape[1]])), "alice", matrix, answers, ids)  # type: ignore[arg-type]
        assert prediction_log.flush()
    finally:
        stop()
    (record,) = sink.records
    return StoredRecord(*record)


def test_a_numeric_record_decodes_to_the_rows_logged() -> None:
    matrix = np.array([[1.5, math.nan, 3.0], [4.0, 5.0, 6.25]])
    answers = _classified(2)
    record = _written(matrix, answers, ["key-7", "key-8"], sample=1.0)
    assert (record.request_key, record.first_row, record.rows, record.logged) == ("key", 7, 2, 2)
    assert record.positions is None
    assert record.confidence_sum == pytest.approx(answers.probabilities.max(axis=1).sum())  # type: ignore[union-attr]
    rows = record.decode()
    assert [r.prediction_id for r in rows] == ["key-7", "key-8"]
    assert rows[0].features == {"a": 1.5, "b": None, "c": 3.0}, "a missing value is null, as JSON had it"
    assert rows[1].features == {"a": 4.0, "b": 5.0, "c": 6.25}
    assert [r.answer for r in rows] == answers.rows()
    assert [r.predicted_label for r in rows] == answers.labels.tolist()  # type: ignore[union-attr]
    assert [r.confidence for r in rows] == answers.probabilities.max(axis=1).tolist()  # type: ignore[union-attr]
    assert (rows[0].username, rows[0].model_version) == ("alice", "v1")


def test_a_categorical_regression_record_decodes_to_the_rows_logged() -> None:
    matrix = np.array([["red", 2.0], ["blue", math.nan]], dtype=object)
    answers = Answers((), values=np.array([10.5, -3.0]))
    record = _written(matrix, answers, ["k-0", "k-1"], sample=1.0)
    rows = record.decode()
    assert [r.features for r in rows] == [{"a": "red", "b": 2.0}, {"a": "blue", "b": None}]
    assert [(r.answer, r.predicted_value, r.predicted_label) for r in rows] == [
        ({"value": 10.5}, 10.5, None),
        ({"value": -3.0}, -3.0, None),
    ]


def test_a_sampled_record_keeps_its_rows_positions() -> None:
    matrix = np.arange(12, dtype=np.float64).reshape(4, 3)
    answers = _classified(4)
    record = _written(
        matrix, answers, [f"k-{i}" for i in range(4)], sample=0.5, draws=_Draws(0.1, 0.9, 0.2, 0.7)
    )
    assert (record.rows, record.logged) == (4, 2)
    assert [r.prediction_id for r in record.decode()] == ["k-0", "k-2"]
    assert record.decode()[1].features == {"a": 6.0, "b": 7.0, "c": 8.0}
    assert record.decode()[1].answer == answers.rows()[2]
    assert (record.stored_index(2), record.stored_index(1), record.stored_index(4)) == (1, None, None)


@pytest.fixture
def store(database_url: str) -> Iterator[PredictionLogStore]:
    database = Database(database_url)
    try:
        yield PredictionLogStore(database.session)
    finally:
        database.dispose()


def _logged_to(
    store: PredictionLogStore, matrix: np.ndarray, answers: Answers, ids: list[str], **log: Any
) -> None:
    draws = log.pop("draws", None)
    prediction_log = PredictionLog(store, buffer_rows=10_000, retention_days=30, flush_seconds=0.01, **log)
    if draws is not None:
        prediction_log._random = draws  # type: ignore[assignment]
    stop = prediction_log.start()
    try:
        prediction_log.record(_Predictor(), "alice", matrix, answers, ids)  # type: ignore[arg-type]
        assert prediction_log.flush()
    finally:
        stop()


def test_feedback_finds_a_sampled_row_in_its_record_and_refuses_one_sampled_out(
    store: PredictionLogStore,
) -> None:
    matrix = np.arange(12, dtype=np.float64).reshape(4, 3)
    answers = _classified(4)
    # A CSV chunk continuing its request at row 10: rows 10 and 12 are logged, 11 and 13 are not.
    ids = [f"req-{i}" for i in range(10, 14)]
    _logged_to(store, matrix, answers, ids, sample=0.5, draws=_Draws(0.1, 0.9, 0.2, 0.7))
    truths = [Truth("req-12", label="y"), Truth("req-11", label="x"), Truth("req-14", label="x")]
    assert store.label(truths, at=time.time()) == ["recorded", "unknown", "unknown"]
    assert store.label([Truth("req-12", label="z")], at=time.time()) == ["relabelled"]
    (row,) = store.labelled(10)
    assert json.loads(row.features) == {"a": 6.0, "b": 7.0, "c": 8.0}
    assert row.label == "z"
    assert store.count() == 2


def test_the_sweep_deletes_records_and_labelled_rows(store: PredictionLogStore) -> None:
    _logged_to(store, np.zeros((3, 3)), _classified(3), ["s-0", "s-1", "s-2"], sample=1.0)
    store.label([Truth("s-1", label="x")], at=time.time())
    assert (store.count(), len(store.labelled(10))) == (3, 1)
    assert store.sweep(time.time() - 60) == 0
    assert store.sweep(time.time() + 60) == 2  # one record, one labelled row
    assert (store.count(), len(store.labelled(10))) == (0, 0)


def _migrate(engine: Engine, revision: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _old_row(prediction_id: str, at: float, **columns: Any) -> dict[str, Any]:
    return {
        "prediction_id": prediction_id,
        "created_at": at,
        "model_version": "v1",
        "username": "alice",
        "features": json.dumps({"a": 1.0, "b": None, "c": 3.0}),
        "answer": json.dumps({"label": "y", "probabilities": {"x": 0.1, "y": 0.7, "z": 0.2}}),
        "predicted_label": "y",
        "confidence": 0.7,
        **columns,
    }


def test_migration_0007_moves_the_per_row_log_into_records_and_back(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        _migrate(engine, "0006")
        at = time.time() - 60
        old = [
            _old_row("K1-0", at),
            _old_row("K1-1", at, shadow_version="v2", shadow_label="y"),
            _old_row("K1-2", at, true_label="x", labelled_at=at + 5, shadow_version="v2", shadow_label="x"),
            _old_row(
                "handwritten",
                at,
                answer=json.dumps({"value": 2.5}),
                predicted_label=None,
                predicted_value=2.5,
            ),
        ]
        columns = sorted({c for row in old for c in row})
        marks = ", ".join(f":{c}" for c in columns)
        with engine.begin() as connection:
            connection.execute(
                text(f"INSERT INTO prediction_log ({', '.join(columns)}) VALUES ({marks})"),
                [{c: row.get(c) for c in columns} for row in old],
            )
        _migrate(engine, "0007")
        with engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(PredictionBatchRow)) == 4
            kept = connection.execute(
                select(PredictionLogRow.prediction_id, PredictionLogRow.true_label)
            ).all()
        assert kept == [("K1-2", "x")], "the labelled row stays, with its truth"

        database = Database(empty_database_url)
        try:
            store = PredictionLogStore(database.session)
            recent = {r.logged.prediction_id: r for r in store.recent(10)}
            assert set(recent) == {"K1-0", "K1-1", "K1-2", "handwritten"}
            assert recent["K1-0"].logged.features == {"a": 1.0, "b": None, "c": 3.0}
            assert recent["K1-0"].logged.answer == {
                "label": "y",
                "probabilities": {"x": 0.1, "y": 0.7, "z": 0.2},
            }
            assert recent["K1-2"].true_label == "x"
            assert recent["handwritten"].logged.predicted_value == 2.5
            (hour,) = store.hourly(at - 3600)
            assert (hour.predictions, hour.confusion.labelled) == (4, 1)
            assert hour.mean_confidence == pytest.approx(0.7)
            (shadow,) = store.shadow_agreement(at - 3600, 0.01)
            assert (shadow.version, shadow.compared, shadow.agreed) == ("v2", 2, 1)
            assert store.label([Truth("K1-0", label="y")], at=time.time()) == ["recorded"]
        finally:
            database.dispose()

        _migrate(engine, "0006", down=True)
        with engine.connect() as connection:
            back = {
                row.prediction_id: row
                for row in connection.execute(text("SELECT * FROM prediction_log")).mappings()
            }
        assert set(back) == {"K1-0", "K1-1", "K1-2", "handwritten"}
        assert json.loads(back["K1-1"]["features"]) == {"a": 1.0, "b": None, "c": 3.0}
        assert (back["K1-1"]["shadow_version"], back["K1-1"]["shadow_label"]) == ("v2", "y")
        assert (back["K1-2"]["true_label"], back["K1-0"]["true_label"]) == ("x", "y")
        assert back["handwritten"]["predicted_value"] == 2.5
    finally:
        engine.dispose()


def test_a_requests_chunks_are_found_by_row_and_the_newest_rows_read_across_records(
    store: PredictionLogStore,
) -> None:
    first = np.arange(9, dtype=np.float64).reshape(3, 3)
    _logged_to(store, first, _classified(3), ["csv-0", "csv-1", "csv-2"], sample=1.0)
    time.sleep(0.01)  # the second chunk is the newer
    _logged_to(store, first + 100, _classified(3), ["csv-3", "csv-4", "csv-5"], sample=1.0)
    statuses = store.label(
        [Truth("csv-4", label="x"), Truth("csv-1", label="y"), Truth("csv-6", label="x")], time.time()
    )
    assert statuses == ["recorded", "recorded", "unknown"]
    found = sorted(json.loads(r.features)["a"] for r in store.labelled(10))
    assert found == [3.0, 103.0], "each row decoded from its own chunk's record"
    assert [r.logged.prediction_id for r in store.recent(4)] == ["csv-3", "csv-4", "csv-5", "csv-0"]
    assert [row["a"] for row in store.features_since(0, 5)] == [100.0, 103.0, 106.0, 0.0, 3.0]


@pytest.mark.parametrize(
    "kind",
    ["classified", "labels only", "regression", "categorical"],
)
def test_calls_encoded_together_are_the_records_each_would_be_alone(kind: str) -> None:
    """The writer encodes a flush's calls of one version together (encode_calls), cutting each array's
    bytes per call: each record must be byte for byte the record of that call alone, a sampled call's
    included, and decode back to the rows it stored."""
    sizes = [1, 3, 1, 2]
    calls = []
    for i, rows in enumerate(sizes):
        matrix = np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) + i
        if kind == "categorical":
            matrix = matrix.astype(object)
            matrix[:, 0] = "red"
        if kind == "regression":
            answers = Answers((), values=np.linspace(0, 1, rows) + i)
        elif kind == "labels only":
            answers = Answers(("x", "y", "z"), label_index=np.arange(rows) % 3)
        else:
            answers = _classified(rows)
        sampled = np.array([True, False, True]) if rows == 3 else None  # rows 0 and 2 of 3 stored
        logged = rows if sampled is None else 2
        call = _Call(100.0 + i, "v1", "alice", NAMES, f"key{i}", i * 10, matrix, answers, sampled, logged)
        calls.append(call.stored())
    classes = ("x", "y", "z") if kind != "regression" else ()
    together = encode_calls("v1", NAMES, classes, calls)
    alone = [encode_calls("v1", NAMES, classes, [call])[0] for call in calls]
    for mine, theirs, call in zip(together, alone, calls, strict=True):
        assert mine[:15] == theirs[:15]
        assert mine[15] == (None if theirs[15] is None else pytest.approx(theirs[15], rel=1e-12))
        rows = StoredRecord(*mine).decode()
        offsets = list(range(call.rows)) if call.positions is None else call.positions.tolist()
        assert [r.prediction_id for r in rows] == [f"{call.key}-{call.first + o}" for o in offsets]
        assert [list(r.features.values()) for r in rows] == call.matrix.tolist()
