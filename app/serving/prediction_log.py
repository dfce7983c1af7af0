"""Prediction ids and the sampled prediction log, written off the request path.

Every answered row gets an id: a random key per request (96 bits from `secrets`, unguessable) and the
row's position, `Xy3...-0`, `Xy3...-1`: one random draw per request, not per row. A model call (a
request, or a CSV chunk continuing its request's numbering) hands its matrix, its answers and which
rows were sampled (one vectorised draw) to a bounded in-memory buffer, by reference (a list append
under a lock), and goes on. The writer thread encodes each call as one record (its sampled rows'
inputs and answers as arrays, app.core.prediction_records: no Python object per row) and inserts a
flush's records a few hundred per INSERT, in one transaction, every FLUSH_SECONDS. A full buffer, or a
database that refuses a batch, drops those rows and counts them
(predictor_prediction_log_rows_total{result}): the answer never waits for the log. The same thread
deletes what is older than PREDICTION_LOG_DAYS every SWEEP_SECONDS.

A shadow challenger's answers to a call's logged rows go to the same record (record_shadow): in the
same insert when they arrive within the flush, else as an update of the record.

Stored per call: the request key and first row, the time, the model version, the username (never a
token or a password), the sampled rows' positions, inputs and answers.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.core.prediction_records import (
    RECORD_COLUMNS,
    Call,
    CallRows,
    encode_calls,
    encode_shadow,
    split_id,
)
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
    """Where the log's records go (app.db.prediction_log.PredictionLogStore)."""

    def insert_rows(self, records: Sequence[Sequence[Any]], shadow_answers: Sequence[Sequence[Any]]) -> None:
        """Records in RECORD_COLUMNS' order (then SHADOW_COLUMNS when a shadow answered them in the
        same flush), then shadow answers to records written before, as SHADOW_COLUMNS + (request key,
        first row) (app.core.prediction_records)."""
        ...

    def sweep(self, before: float) -> int: ...


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to make, on the request path
class _Call:
    """One model call as the request handed it over: references, nothing copied or encoded yet."""

    at: float
    version: str
    user: str
    features: Sequence[str]
    key: str
    first: int
    matrix: np.ndarray  # every row of the call; `sampled` picks the logged ones
    answers: Answers
    sampled: np.ndarray | None  # boolean mask; None: all rows
    logged: int

    def __len__(self) -> int:
        return self.logged

    def kind(self) -> tuple[Any, ...]:
        """What calls encoded together share: the version, the columns, the classes, the arrays."""
        answers = self.answers
        return (
            self.version,
            tuple(self.features),
            answers.classes,
            answers.label_index is None,
            answers.probabilities is None,
            answers.values is None,
            self.matrix.dtype == np.float64,
        )

    # The answers' arrays, as encode_calls reads a call (app.core.prediction_records.Call).
    @property
    def label_index(self) -> np.ndarray | None:
        return self.answers.label_index

    @property
    def probabilities(self) -> np.ndarray | None:
        return self.answers.probabilities

    @property
    def values(self) -> np.ndarray | None:
        return self.answers.values

    @property
    def rows(self) -> int:
        return len(self.matrix)

    @property
    def positions(self) -> np.ndarray | None:
        return None  # read only when every row is stored: a sampled call is stored() first

    def stored(self) -> Call:
        """The call as encode_calls takes it: itself, or a sampled call's stored rows only."""
        mask = self.sampled
        if mask is None:
            return self
        answers = _take(self.answers, mask)
        return CallRows(
            self.key,
            self.first,
            self.at,
            self.user,
            len(self.matrix),
            np.flatnonzero(mask),
            self.matrix[mask],
            answers.label_index,
            answers.probabilities,
            answers.values,
        )


@dataclass(slots=True)
class _ShadowAnswer:
    """A shadow challenger's answers to one call's logged rows."""

    key: str
    first: int
    version: str
    answers: Answers  # the logged rows only, in the record's order
    agreed: int
    difference: float | None  # the sum of |shadow - champion| (regression)

    def __len__(self) -> int:
        return len(self.answers)

    def encode(self) -> list[Any]:
        answers = self.answers
        return encode_shadow(
            self.version, answers.classes, answers.label_index, answers.values, self.agreed, self.difference
        )


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
        self._random = np.random.default_rng()  # sampling, not security
        self._pending: list[_Call | _ShadowAnswer] = []
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
        """Which of a call's rows to log: None for all of them, else a boolean mask (one numpy draw)."""
        if self.sample >= 1:
            return None
        return self._random.random(rows) < self.sample

    def record(
        self, predictor: Predictor, user: str, matrix: np.ndarray, answers: Answers, ids: list[str]
    ) -> np.ndarray | None:
        """Queue a model call's sampled rows (`ids`: its rows' ids, the first naming its record);
        returns which were queued (None: all, as `sampled`)."""
        if self.sample <= 0 or not ids:
            return np.zeros(len(ids), dtype=bool) if ids else None
        mask = self.sampled(len(ids))
        logged = len(ids) if mask is None else int(np.count_nonzero(mask))
        if logged == 0:
            return mask
        key, first = split_id(ids[0])
        features = predictor.metadata.feature_names
        call = _Call(
            self._clock(), predictor.version, user, features, key, first, matrix, answers, mask, logged
        )
        if self._queue(call):
            return mask
        return np.zeros(len(ids), dtype=bool)

    def record_shadow(
        self, version: str, record: str, answers: Answers, agreed: int, difference: float | None
    ) -> None:
        """Queue a shadow challenger's answers to the logged rows of the call whose first id is
        `record` (judged once their feedback arrives), with how many agreed with the champion's and
        the sum of the differences between their values (regression)."""
        if len(answers):
            key, first = split_id(record)
            self._queue(_ShadowAnswer(key, first, version, answers, agreed, difference))

    def _queue(self, batch: _Call | _ShadowAnswer) -> bool:
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

    def write(self, batches: list[_Call | _ShadowAnswer]) -> None:
        records: list[list[Any]] = []
        by_key: dict[tuple[str, int], list[Any]] = {}
        rows = 0
        # Calls of one version are encoded together (encode_calls): most are one-row requests, for
        # which a record of its own would cost a dozen numpy calls.
        alike: dict[tuple[Any, ...], list[Call]] = {}
        shadows: list[_ShadowAnswer] = []
        for batch in batches:
            if isinstance(batch, _ShadowAnswer):
                shadows.append(batch)
                continue
            rows += batch.logged
            alike.setdefault(batch.kind(), []).append(batch.stored())
        for (version, features, classes, *_), calls in alike.items():
            encoded = encode_calls(version, features, classes, calls)
            for call, record in zip(calls, encoded, strict=True):
                records.append(record)
                by_key[call.key, call.first] = record
        later: list[list[Any]] = []  # shadow answers to records an earlier flush wrote
        for shadow in shadows:
            # Its record is usually in this same flush (the shadow answers within tens of
            # milliseconds): its answers go in the record's columns, not in an update.
            answered = by_key.get((shadow.key, shadow.first))
            if answered is not None and len(answered) == len(RECORD_COLUMNS):
                answered += shadow.encode()
            else:
                later.append([*shadow.encode(), shadow.key, shadow.first])
        try:
            self.sink.insert_rows(records, later)
        except Exception as exc:  # the database: these rows are lost, the next batch tries again
            metrics.PREDICTION_LOG_ROWS.labels(result="write_failed").inc(rows)
            if not self._failing:
                log.warning("prediction log: %d rows not written: %s", rows, exc)
            self._failing = True
            return
        if self._failing:
            log.info("prediction log written again")
        self._failing = False
        metrics.PREDICTION_LOG_ROWS.labels(result="written").inc(rows)

    def sweep(self) -> None:
        try:
            deleted = self.sink.sweep(self._clock() - self.retention_days * DAY_SECONDS)
        except Exception as exc:
            log.warning("prediction log sweep failed: %s", exc)
            return
        if deleted:
            log.info("prediction log: %d rows past PREDICTION_LOG_DAYS deleted", deleted)


def _take(answers: Answers, mask: np.ndarray) -> Answers:
    """The answers of the masked rows only."""
    pick = lambda a: None if a is None else a[mask]  # noqa: E731
    return Answers(
        answers.classes, pick(answers.label_index), pick(answers.probabilities), pick(answers.values)
    )
