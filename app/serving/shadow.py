"""The shadow challenger: another model version scoring the champion's traffic in the background.

A request hands the shadow its batch after the champion answered (Tracing.trace): a reference to the
matrix and the answers, appended to a bounded queue under a lock. A full queue drops the batch and
counts its rows; the request never waits. One daemon thread, at a lower OS priority so the
champion's requests win the cores, lets a few requests' batches gather (LINGER_SECONDS, or until
there are enough), scores them in one model call, and counts per row whether its answer agreed with the
champion's: the same label, or for a regression a value within AGREEMENT_RTOL of the champion's.
Its answers to rows the prediction log kept go to the log too, to be judged against their ground
truth once it arrives (live quality, and POST /model/promote's evidence).

Nothing here writes to the arrays it is handed: the champion's answer is built from them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from app.core.artifacts import ModelMetadata
from app.observability import metrics
from app.serving.prediction_log import PredictionLog
from app.serving.predictor import Answers, Predictor

log = logging.getLogger("predictor")

# Two regressions rarely give the same float: within 1% of the champion's value is the same answer.
AGREEMENT_RTOL = 0.01
# How long the first batch queued waits for others to join it (unless COALESCE_ROWS rows or 3/4 of
# the queue's batches are in first): one model call per request would cost the shadow as much as the
# champion (~100 µs for one row of the default SVC), and a wake-up per request a context switch and a
# turn at the GIL each. Gathered by the hundred, a row costs the thread ~10 µs in all, by the 32 ~20
# (measured at 2,000 one-row requests a second, python -m bench.shadow).
LINGER_SECONDS = 0.1
# Rows per model call at most when queued batches are scored together: enough that the per-call cost
# vanishes, few enough that one call never holds the GIL for long (a CSV chunk is scored on its own).
COALESCE_ROWS = 2048
# Rows the queue holds at most, whatever its count of batches: five CSV chunks (app/serving/csv_chunks.py)
# waiting behind a slow shadow, not SHADOW_QUEUE_BATCHES of them.
MAX_QUEUED_ROWS = 100_000
# Added to the thread's nice value: CFS then gives it about a tenth of a core against a request
# thread when both want one, and all of an idle one.
NICENESS = 10


class ShadowRefused(Exception):
    """This version cannot shadow the champion (it is the champion, or its rows do not fit it)."""


def mismatch(champion: ModelMetadata, shadow: ModelMetadata) -> str | None:
    """Why `shadow` cannot score the rows parsed for `champion`, or None when it can."""
    if shadow.task != champion.task:
        return f"version {shadow.version} is a {shadow.task} model, the champion a {champion.task} one"
    columns = [(f.name, f.type) for f in champion.features]
    if [(f.name, f.type) for f in shadow.features] != columns:
        return (
            f"version {shadow.version} takes other features than the champion "
            f"({', '.join(f.name for f in shadow.features)} against {', '.join(n for n, _ in columns)})"
        )
    return None


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to make, on the request path
class _Offered:
    """One champion model call's batch, as offered: nothing is copied, nothing is changed."""

    matrix: np.ndarray
    answers: Answers
    ids: list[str]
    logged: np.ndarray | None  # which rows the prediction log kept; None: all

    def __len__(self) -> int:
        return len(self.ids)


class ShadowRunner:
    """One shadow version: the queue requests offer batches to, and the thread that scores them."""

    def __init__(self, predictor: Predictor, log: PredictionLog | None, queue_batches: int) -> None:
        self.predictor = predictor
        self.version = predictor.version
        self._log = log  # None: PREDICTION_LOG_SAMPLE is 0, nothing can be judged later
        self._limit = queue_batches
        self._queue: deque[_Offered] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._busy = False  # the thread holds batches taken from the queue
        self._stopped = False
        self._flushing = 0  # callers of flush() waiting: no lingering meanwhile
        # The queue's length at which the thread is woken rather than left to linger: room is left for
        # the batches that come while it scores.
        self._wake_at = max(1, queue_batches * 3 // 4)
        self._thread: threading.Thread | None = None
        # The last champion checked against this shadow, and whether its rows fit.
        self._checked: tuple[ModelMetadata, bool] | None = None
        metrics.shadow_started(self.version)
        self._rows = {r: metrics.SHADOW_ROWS.labels(self.version, r) for r in metrics.SHADOW_RESULTS}
        self._seconds = metrics.SHADOW_INFERENCE_SECONDS.labels(self.version)
        self._failing = False  # the last call failed: logged once until one succeeds

    # --- the request side: a lock, an append, never a wait ---

    def offer(
        self,
        champion: Predictor,
        matrix: np.ndarray,
        answers: Answers,
        ids: list[str],
        logged: np.ndarray | None,
    ) -> None:
        if not ids or champion.version == self.version:
            return  # just promoted: the champion is this version, nothing to compare
        if not self._fits(champion.metadata):
            self._rows["failed"].inc(len(ids))
            return
        offered = _Offered(matrix, answers, ids, logged)
        with self._lock:
            if self._stopped:
                return
            queued = len(self._queue)
            full = queued >= self._limit or self._queued_rows >= MAX_QUEUED_ROWS
            if not full:
                was_due = self._due()
                self._queue.append(offered)
                self._queued_rows += len(offered)
                # Woken for the first batch (it lingers then) and once there is enough to score, not
                # for each one.
                if queued == 0 or (not was_due and self._due()):
                    self._wake.notify()
        if full:
            self._rows["dropped"].inc(len(ids))

    def _due(self) -> bool:
        """Whether the queue holds enough to score now rather than linger; called under the lock."""
        return len(self._queue) >= self._wake_at or self._queued_rows >= COALESCE_ROWS

    def _fits(self, champion: ModelMetadata) -> bool:
        checked = self._checked
        if checked is not None and checked[0] is champion:
            return checked[1]
        why = mismatch(champion, self.predictor.metadata)
        if why is not None:
            log.warning(
                "shadow %s does not score version %s's traffic: %s", self.version, champion.version, why
            )
        self._checked = (champion, why is None)
        return why is None

    # --- the thread ---

    def start(self) -> ShadowRunner:
        self._thread = threading.Thread(target=self._run, name=f"shadow-{self.version}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; what is still queued is not scored."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            self._queued_rows = 0
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was offered before this call is scored; False on timeout (tests, bench)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._wake.notify_all()
            try:
                while self._queue or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._thread is None or not self._thread.is_alive():
                        return False
                    self._wake.wait(min(left, 0.05))
            finally:
                self._flushing -= 1
        return True

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._wake.wait()
                linger_until = time.monotonic() + LINGER_SECONDS
                while not self._due() and not self._stopped and not self._flushing:
                    left = linger_until - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                if self._stopped:
                    return
                batches = self._take()
                self._busy = True
            try:
                for group in _groups(batches):
                    self._score(group)
            except Exception:  # a bug here must not end the thread: the next batches still come
                log.exception("shadow %s: scoring failed", self.version)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def _take(self) -> list[_Offered]:
        """Queued batches up to COALESCE_ROWS rows (at least one), oldest first; called under the lock."""
        taken = [self._queue.popleft()]
        rows = len(taken[0])
        while self._queue and rows + len(self._queue[0]) <= COALESCE_ROWS:
            rows += len(self._queue[0])
            taken.append(self._queue.popleft())
        self._queued_rows -= rows
        return taken

    def _score(self, group: list[_Offered]) -> None:
        matrix = group[0].matrix if len(group) == 1 else np.concatenate([b.matrix for b in group])
        started = time.perf_counter()
        try:
            answers = self.predictor.infer(matrix)
        except Exception as exc:  # a RowError (a row it cannot answer) or a broken model
            if len(group) > 1:
                for batch in group:  # one request's bad row fails only that request's rows
                    self._score([batch])
                return
            self._rows["failed"].inc(len(matrix))
            if not self._failing:
                log.warning("shadow %s: a batch not scored: %s: %s", self.version, type(exc).__name__, exc)
            self._failing = True
            return
        self._seconds.observe(time.perf_counter() - started)
        self._failing = False
        champion = _stacked(group)
        same = _agreement(champion, answers)
        agreed = int(same.sum())
        self._rows["agreed"].inc(agreed)
        self._rows["disagreed"].inc(len(same) - agreed)
        if self._log is not None:
            self._record(group, champion, answers, same)

    def _record(self, group: list[_Offered], champion: Answers, answers: Answers, same: np.ndarray) -> None:
        """The shadow's answers to the rows the prediction log kept, to each call's record, with how
        many agreed with the champion's: one record_shadow per call, array slices, no loop per row."""
        assert self._log is not None
        start = 0
        for batch in group:
            rows = slice(start, start + len(batch))
            start += len(batch)
            if batch.logged is not None and not batch.logged.any():
                continue
            kept = batch.logged
            label_index = None if answers.label_index is None else answers.label_index[rows]
            values = None if answers.values is None else answers.values[rows]
            agreed = same[rows]
            difference = None
            if values is not None and champion.values is not None:
                gap = np.abs(values - champion.values[rows])
                difference = float(gap.sum() if kept is None else gap[kept].sum())
            if kept is not None:
                label_index = None if label_index is None else label_index[kept]
                values = None if values is None else values[kept]
                agreed = agreed[kept]
            # The label or the value only: no probabilities for the writer to encode.
            self._log.record_shadow(
                self.version,
                batch.ids[0],
                Answers(answers.classes, label_index, None, values),
                int(agreed.sum()),
                difference,
            )


def _groups(batches: list[_Offered]) -> list[list[_Offered]]:
    """Runs of batches that one model call can score (matrices of the same columns and dtype) and
    one comparison can judge (answered by a champion with the same classes)."""
    groups: list[list[_Offered]] = []
    last = None
    for batch in batches:
        key = (batch.matrix.dtype, batch.matrix.shape[1:], batch.answers.classes)
        if key == last:
            groups[-1].append(batch)
        else:
            groups.append([batch])
            last = key
    return groups


def _stacked(group: list[_Offered]) -> Answers:
    """The champion's answers to the group's rows as one batch (labels or values only)."""
    first = group[0].answers
    if len(group) == 1:
        return first

    def stack(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        present = [a for a in arrays if a is not None]
        return np.concatenate(present) if present else None

    return Answers(
        first.classes,
        stack([b.answers.label_index for b in group]),
        None,
        stack([b.answers.values for b in group]),
    )


def _agreement(champion: Answers, shadow: Answers) -> np.ndarray:
    """Per row, whether the shadow's answer is the champion's."""
    if shadow.values is not None and champion.values is not None:
        return np.isclose(shadow.values, champion.values, rtol=AGREEMENT_RTOL, atol=1e-9)
    assert shadow.label_index is not None and champion.label_index is not None
    if shadow.classes == champion.classes:
        return np.asarray(shadow.label_index == champion.label_index, dtype=bool)
    # Not answers.labels: that caches on the champion's object, which a request is still reading.
    ours = np.asarray(champion.classes, dtype=object)[champion.label_index]
    return np.asarray(np.asarray(shadow.classes, dtype=object)[shadow.label_index] == ours, dtype=bool)


def _lower_priority() -> None:
    """Lower this thread's priority (Linux: a thread is a task of its own with its own nice value)."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + NICENESS))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run at the usual priority
        log.debug("shadow thread priority unchanged: %s", exc)
