"""One model call per request, whatever its format (JSON, CSV chunk, V2 tensors), and what it tells
the metrics: rows counted by label, inference time, and the drift monitor's window."""

from __future__ import annotations

import time

import numpy as np

from app.observability import metrics
from app.serving.predictor import Answers, Predictor


def score(predictor: Predictor, matrix: np.ndarray, metrics_enabled: bool = True) -> Answers:
    """The batch's answers; raises RowError (naming each row) for rows the model cannot answer."""
    started = time.perf_counter()
    answers = predictor.infer(matrix)
    seconds = time.perf_counter() - started
    if metrics_enabled:
        counted = answers.counted_as()
        metrics.predictions_served(predictor.version, counted, seconds)
        if predictor.drift is not None:
            classification = predictor.metadata.task == "classification"
            predictor.drift.observe(matrix, counted if classification else None)
            if predictor.drift.refresh_due():
                metrics.publish_drift(predictor.drift)
    return answers
