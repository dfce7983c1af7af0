"""Prediction ids and the sampled prediction log, written off the request path.

Every answered row gets an id: a random key per request (96 bits from `secrets`, unguessable) and the
row's position, `Xy3...-0`, `Xy3...-1`: one random draw per request, not per row. A request hands its
sampled rows to a bounded in-memory buffer (a list append under a lock) and goes on; the writer
thread turns them into rows and inserts them in one transaction every FLUSH_SECONDS. A full
buffer, or a database that refuses a batch, drops those rows and counts them
(predictor_prediction_log_rows_total{result}): the answer never waits for the log. The same thread
deletes what is older than PREDICTION_LOG_DAYS every SWEEP_SECONDS.

Stored per row: the id, the time, the model version, the username (never a token or a password), the
input row and the answer.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np

from app.observability import metrics
from app.serving.predictor import Answers, Predictor

log = logging.getLogger("predictor")

FLUSH_SECONDS = 0.5
SWEEP_SECONDS = 3600.0
DAY_SECONDS = 86400.0


def prediction_ids(rows: int, first: int = 0, key: str | None = None) -> list[str]:
    """Ids for rows `first` .. `first + rows - 1` of one request (`key`: that request's, else a new one)."""
    key = key or request_key()
    return [f"{key}-{i}" for i in range(first, first + rows)]


def request_key() -> str:
    return secrets.token_urlsafe(12)  # 16 URL-safe characters: no escaping in JSON or CSV


class PredictionSink(Protocol):
    """Where the log's rows go (app.db.prediction_log.PredictionLogStore)."""

    def insert_rows(self, rows: Sequence[Sequence[Any]], shadow_answers: Sequence[Sequence[Any]]) -> None:
        """Rows in LOG_COLUMNS' order, then shadow answers to rows written before, as (version, label,
        value, prediction_id) (app.db.prediction_log)."""
        ...

    def sweep(self, before: float) -> int: ...


@dataclass(frozen=True)
class _Batch:
    at: float
    version: str
    user: str
    features: tuple[str, ...]
    matrix: np.ndarray
    answers: Answers
    ids: list[str]
    shadow: bool = False  # a shadow challenger's answers to logged rows, not the champion's

    def __len__(self) -> int:
        return len(self.ids)


_encode = msgspec.json.Encoder().encode  # in C; NaN (a missing value) is written null


def _json(value: Any) -> str:
    return _encode(value).decode()


def _answer_columns(answers: Answers) -> list[tuple[str, str | None, float | None, float | None]]:
    """Per row: the answer's JSON as /predict gave it, the label, the value, the top probability."""
    if answers.values is not None:
        return [(_json({"value": v}), None, v, None) for v in answers.values.tolist()]
    labels = answers.labels.tolist() if answers.labels is not None else []
    if answers.probabilities is None:
        return [(_json({"label": label}), label, None, None) for label in labels]
    classes = answers.classes
    tops = answers.probabilities.max(axis=1).tolist()
    return [
        (_json({"label": label, "probabilities": dict(zip(classes, p, strict=True))}), label, None, top)
        for label, p, top in zip(labels, answers.probabilities.tolist(), tops, strict=True)
    ]


class PredictionLog:
    """The bounded buffer between requests and the database, and the thread that drains it."""

    def __init__(
        self,
        sink: PredictionSink,
        sample: float,
        buffer_rows: int,
        retention_days: float,
        flush_seconds: float = FLUSH_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink = sink
        self.sample = sample
        self.buffer_rows = buffer_rows
        self.retention_days = retention_days
        self.flush_seconds = flush_seconds
        self.sweep_seconds = sweep_seconds
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - sampling, not security
        self._pending: list[_Batch] = []
        self._pending_rows = 0
        self._writing = 0  # rows taken by the writer, not yet written
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self._flush_asked = False
        self._failing = False  # the last write failed: logged once per outage
        self._thread: threading.Thread | None = None

    # --- the request side: never blocks on the database ---

    def sampled(self, rows: int) -> np.ndarray | None:
        """Which of a request's rows to log: None for all of them, else a boolean mask."""
        if self.sample >= 1:
            return None
        return np.asarray([self._random.random() < self.sample for _ in range(rows)], dtype=bool)

    def record(
        self, predictor: Predictor, user: str, matrix: np.ndarray, answers: Answers, ids: list[str]
    ) -> np.ndarray | None:
        """Queue a request's sampled rows; returns which were queued (None: all, as `sampled`)."""
        if self.sample <= 0 or not ids:
            return np.zeros(len(ids), dtype=bool) if ids else None
        mask = self.sampled(len(ids))
        if mask is not None:
            if not mask.any():
                return mask
            matrix, answers, ids = (
                matrix[mask],
                _take(answers, mask),
                [i for i, m in zip(ids, mask, strict=True) if m],
            )
        features = tuple(f.name for f in predictor.metadata.features)
        batch = _Batch(self._clock(), predictor.version, user, features, matrix, answers, ids)
        return (
            mask if self._queue(batch) else np.zeros(len(mask) if mask is not None else len(ids), dtype=bool)
        )

    def record_shadow(self, version: str, answers: Answers, ids: list[str]) -> None:
        """Queue a shadow challenger's answers to logged rows (judged once their feedback arrives)."""
        if ids:
            self._queue(_Batch(self._clock(), version, "", (), np.empty((0, 0)), answers, ids, shadow=True))

    def _queue(self, batch: _Batch) -> bool:
        with self._lock:
            if self._pending_rows + len(batch) > self.buffer_rows:
                full = True
            else:
                full = False
                self._pending.append(batch)
                self._pending_rows += len(batch)
                if self._pending_rows >= self.buffer_rows // 2:  # write early rather than drop
                    self._wake.notify_all()
        if full:
            metrics.PREDICTION_LOG_ROWS.labels(result="buffer_full").inc(len(batch))
        return not full

    # --- the writer thread ---

    def start(self) -> Callable[[], None]:
        """Run the writer in a daemon thread; returns the function that stops it (writing what is left)."""
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self.stop

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was queued before this call is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flush_asked = True
            self._wake.notify_all()
            while self._pending_rows or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        next_sweep = 0.0  # at start-up, then every sweep_seconds
        while True:
            with self._lock:
                # One transaction per period, however busy: each commit costs more than many rows.
                deadline = time.monotonic() + self.flush_seconds
                while not (self._stopped or self._flush_asked or self._pending_rows >= self.buffer_rows // 2):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                self._flush_asked = False
                batches, self._pending = self._pending, []
                self._writing, self._pending_rows = self._pending_rows, 0
                stopped = self._stopped
            metrics.PREDICTION_LOG_BUFFER.set(self._writing)
            if batches:
                try:
                    self.write(batches)
                except Exception:  # a bug, not the database (write() counts that): the thread goes on
                    log.exception("prediction log: %d rows not written", self._writing)
                    metrics.PREDICTION_LOG_ROWS.labels(result="write_failed").inc(self._writing)
            with self._lock:
                self._writing = 0
                self._wake.notify_all()
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + self.sweep_seconds
            if stopped:
                return

    def write(self, batches: list[_Batch]) -> None:
        rows: list[list[Any]] = []  # LOG_COLUMNS' order
        by_id: dict[str, list[Any]] = {}
        later: list[tuple[Any, ...]] = []  # shadow answers to rows an earlier flush wrote
        for batch in batches:
            if batch.shadow:
                # Its champion rows are usually in this same flush (the shadow answers within tens of
                # milliseconds): its answer goes in their columns, not in rows of its own.
                for pid, label, value in zip(batch.ids, *_label_and_value(batch.answers), strict=True):
                    row = by_id.get(pid)
                    if row is not None:
                        row[-3:] = (batch.version, label, value)
                    else:
                        later.append((batch.version, label, value, pid))
                continue
            names, user = batch.features, batch.user[:64]
            features = [_json(dict(zip(names, values, strict=True))) for values in batch.matrix.tolist()]
            for pid, inputs, answer in zip(batch.ids, features, _answer_columns(batch.answers), strict=True):
                row = [pid, batch.at, batch.version, user, inputs, *answer, None, None, None]
                rows.append(row)
                by_id[pid] = row
        shadow_rows = later
        try:
            self.sink.insert_rows(rows, shadow_rows)
        except Exception as exc:  # the database: these rows are lost, the next batch tries again
            metrics.PREDICTION_LOG_ROWS.labels(result="write_failed").inc(len(rows) + len(shadow_rows))
            if not self._failing:
                log.warning("prediction log: %d rows not written: %s", len(rows) + len(shadow_rows), exc)
            self._failing = True
            return
        if self._failing:
            log.info("prediction log written again")
        self._failing = False
        metrics.PREDICTION_LOG_ROWS.labels(result="written").inc(len(rows) + len(shadow_rows))

    def sweep(self) -> None:
        try:
            deleted = self.sink.sweep(self._clock() - self.retention_days * DAY_SECONDS)
        except Exception as exc:
            log.warning("prediction log sweep failed: %s", exc)
            return
        if deleted:
            log.info("prediction log: %d rows past PREDICTION_LOG_DAYS deleted", deleted)


def _label_and_value(answers: Answers) -> tuple[list[Any], list[Any]]:
    """Per row: the label (None for a regression) and the value (None for a classifier)."""
    if answers.values is not None:
        return [None] * len(answers), answers.values.tolist()
    labels = answers.labels.tolist() if answers.labels is not None else []
    return labels, [None] * len(labels)


def _take(answers: Answers, mask: np.ndarray) -> Answers:
    """The answers of the masked rows only."""
    pick = lambda a: None if a is None else a[mask]  # noqa: E731
    return Answers(
        answers.classes, pick(answers.label_index), pick(answers.probabilities), pick(answers.values)
    )
