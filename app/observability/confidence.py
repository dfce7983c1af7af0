"""The label-free estimate of live accuracy: the mean top probability of the recent answers.

A calibrated classifier is right about as often as it is confident, so a fall in this mean shows a
drop in quality before any ground truth arrives. It is an estimate: a miscalibrated model, or
drift the model is confidently wrong about, fools it; POST /feedback's live accuracy is the measure.

As the drift window, requests only queue their array (an append under a lock); the top
probabilities are taken, for the whole queue at once, when the estimate is read.
"""

from __future__ import annotations

import math
import threading

import numpy as np


class ConfidenceWindow:
    """The top probability of the last `size` answered rows."""

    def __init__(self, size: int) -> None:
        self._ring = np.full(size, np.nan)
        self._next = 0
        self._queued: list[np.ndarray] = []
        self._queued_rows = 0
        self._lock = threading.Lock()

    def observe(self, probabilities: np.ndarray) -> None:
        """Queue a batch's [rows, classes] probabilities."""
        with self._lock:
            self._queued.append(probabilities)
            self._queued_rows += len(probabilities)
            if self._queued_rows > 2 * len(self._ring):  # read rarely: bound what waits
                self._take()

    def expected_accuracy(self) -> float:
        """The mean top probability over the window; NaN before any row."""
        with self._lock:
            self._take()
            ring = self._ring
            seen = ring[~np.isnan(ring)]
        return float(seen.mean()) if len(seen) else math.nan

    def _take(self) -> None:
        if not self._queued:
            return
        top = np.concatenate([p.max(axis=1) for p in self._queued])[-len(self._ring) :]
        self._queued, self._queued_rows = [], 0
        positions = (self._next + np.arange(len(top))) % len(self._ring)
        self._ring[positions] = top
        self._next = (self._next + len(top)) % len(self._ring)
