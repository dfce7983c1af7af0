"""One model call per request, whatever its format (JSON, CSV chunk, V2 tensors), and what it tells
the metrics: rows counted by label, inference time, and the drift monitor's window.

Also the rules for where a request is scored, which app.serving.data_plane applies to every protocol:
on the event loop when it is small and the model fast (a hand-off to the thread pool costs more than
the work), in the thread pool otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
import numpy as np

from app.observability import metrics
from app.serving.predictor import Answers, Predictor

# A body up to this size is decoded, scored and encoded on the event loop (about 150 rows of four
# features): tens of microseconds for a fast model.
INLINE_BODY_BYTES = 16 * 1024
# A model whose calls take longer than this, on average, is always called from the thread pool.
INLINE_CALL_SECONDS = 0.001
# Scoring threads at a time, per process: one per core. More only queue for the GIL (the model call
# releases it, the decoding and encoding around it do not), and 32 concurrent requests in 40 threads
# cost a third more CPU per request than in two, with a longer tail.
SCORING_THREADS = os.cpu_count() or 1

T = TypeVar("T")


def scoring_limiter() -> anyio.CapacityLimiter:
    """The per-process bound on scoring threads; made inside the event loop (the app's lifespan)."""
    return anyio.CapacityLimiter(SCORING_THREADS)


async def off_loop(limiter: anyio.CapacityLimiter, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a worker thread, at most `limiter`'s count of them at a time."""
    return await anyio.to_thread.run_sync(partial(function, *args), limiter=limiter)


def predictor_is_slow(predictor: Predictor) -> bool:
    """Whether this model's calls took long enough, lately, to keep them off the event loop."""
    mean = predictor.call_time.mean
    return mean is not None and mean > INLINE_CALL_SECONDS


def score(predictor: Predictor, matrix: np.ndarray, metrics_enabled: bool = True) -> Answers:
    """The batch's answers; raises RowError (naming each row) for rows the model cannot answer."""
    started, cpu = time.perf_counter(), time.thread_time()
    answers = predictor.infer(matrix)
    seconds = time.perf_counter() - started
    # CPU time, not wall time: a call from the thread pool also waits for the GIL, which would make
    # a fast model look slow and keep it off the event loop for good.
    predictor.call_time.add(time.thread_time() - cpu)
    if metrics_enabled:
        metrics.predictions_served(predictor.version, answers.label_counts(), len(answers), seconds)
        if predictor.confidence is not None and answers.probabilities is not None:
            predictor.confidence.observe(answers.probabilities)
        if predictor.drift is not None:
            predictor.drift.observe(matrix, answers.label_index)
            if predictor.publishes_drift and predictor.drift.refresh_due():
                metrics.publish_drift(predictor.drift)
                metrics.publish_expected_accuracy(predictor.version, predictor.confidence)
    return answers
