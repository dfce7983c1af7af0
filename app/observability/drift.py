"""Drift: the population stability index (PSI) of recent inputs against the training profile.

Incremental: each feature keeps a ring buffer of the bin index of its last `window` values and the
count per bin, so computing PSI is O(bins). Requests only queue their batch (a list append under
a lock): the batches are binned together, one searchsorted per feature, when PSI is read or the
queue reaches a window's worth of rows. numpy on one row at a time cost more than the request.
Missing values are left out, as the profile's bins leave them out.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.core.artifacts import (
    REFERENCE_PROFILE_FILE,
    CategoricalProfile,
    Feature,
    NumericProfile,
    ReferenceProfile,
)

# Keeps log(actual / expected) finite when a bin is empty on one side.
EPSILON = 1e-4
# The bin of the categories training never saw.
OTHER_CATEGORIES = "(other)"


def no_reference_profile(version: str) -> str:
    """Why a version has no drift (an imported one without a labelled sample, a damaged file), in the
    words GET /monitoring and GET /model-info share."""
    return f"version {version} has no readable {REFERENCE_PROFILE_FILE}"


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    total = actual_counts.sum()
    if total == 0:
        return math.nan
    actual = np.maximum(actual_counts / total, EPSILON)
    expected = np.maximum(expected, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class DriftSettings:
    window: int
    min_rows: int
    # PSI is recomputed at most this often per process (and at every scrape of /metrics).
    refresh_seconds: float


class BinnedWindow:
    """The last `size` bin indices, and how many fall in each bin."""

    def __init__(self, expected: Sequence[float], size: int) -> None:
        self.expected = np.asarray(expected, dtype=float)
        self.counts = np.zeros(len(self.expected), dtype=np.int64)
        self._ring = np.full(size, -1, dtype=np.int64)
        self._next = 0
        self.seen = 0

    def add(self, bins: np.ndarray) -> None:
        size = len(self._ring)
        self.seen += len(bins)
        if len(bins) >= size:
            bins = bins[-size:]
        positions = (self._next + np.arange(len(bins))) % size
        evicted = self._ring[positions]
        evicted = evicted[evicted >= 0]
        np.subtract.at(self.counts, evicted, 1)
        np.add.at(self.counts, bins, 1)
        self._ring[positions] = bins
        self._next = (self._next + len(bins)) % size

    def psi(self) -> float:
        return psi(self.expected, self.counts)


class _NumericBinner:
    def __init__(self, edges: list[float]) -> None:
        self._edges = np.asarray(edges, dtype=float)

    def __call__(self, column: np.ndarray) -> np.ndarray:
        values = column.astype(float)
        values = values[~np.isnan(values)]
        return np.searchsorted(self._edges, values, side="left")


class _CategoricalBinner:
    def __init__(self, categories: list[str]) -> None:
        # Unseen categories share one extra bin, whose expected share is ~0: they show as drift.
        self._index = {c: i for i, c in enumerate(categories)}
        self._other = len(categories)

    def __call__(self, column: np.ndarray) -> np.ndarray:
        return np.fromiter(
            (self._index.get(v, self._other) for v in column if isinstance(v, str)), dtype=np.int64
        )


@dataclass(frozen=True)
class ReferenceBins:
    """How the training profile bins one feature: its binner, the training share and a name per bin."""

    binner: Callable[[np.ndarray], np.ndarray]
    expected: list[float]
    names: list[str]


def reference_bins(reference: NumericProfile | CategoricalProfile) -> ReferenceBins:
    """The live monitor's bins and the Monitoring page's histograms are the same bins."""
    if isinstance(reference, CategoricalProfile):
        categories = sorted(reference.proportions)
        return ReferenceBins(
            _CategoricalBinner(categories),
            [reference.proportions[c] for c in categories] + [0.0],
            [*categories, OTHER_CATEGORIES],
        )
    edges = reference.bin_edges
    names = [f"<= {edges[0]:g}"] if edges else ["all"]
    names += [f"{low:g} to {high:g}" for low, high in itertools.pairwise(edges)]
    names += [f"> {edges[-1]:g}"] if edges else []
    return ReferenceBins(_NumericBinner(edges), list(reference.bin_proportions), names)


class DriftMonitor:
    """PSI per feature and for the predicted labels, over a sliding window of recent rows."""

    def __init__(
        self,
        profile: ReferenceProfile,
        features: list[Feature],
        classes: list[str],
        *,
        window: int = 1000,
        min_rows: int = 100,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.min_rows = min_rows
        self.refresh_seconds = refresh_seconds
        self._last_refresh = -math.inf
        self._lock = threading.Lock()
        self._features: list[tuple[int, str, Callable[[np.ndarray], np.ndarray], BinnedWindow]] = []
        for position, feature in enumerate(features):
            reference = profile.features.get(feature.name)
            if reference is None:
                continue
            bins = reference_bins(reference)
            self._features.append((position, feature.name, bins.binner, BinnedWindow(bins.expected, window)))
        balance = profile.target.class_balance or {}
        self._labels = (
            BinnedWindow([balance.get(c, 0.0) for c in classes], window) if classes and balance else None
        )
        self._window = window
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0

    def observe(self, rows: np.ndarray, label_index: np.ndarray | None = None) -> None:
        """Queue a validated batch (the same array the model receives) and its predicted labels, as
        their positions in `classes` (Answers.label_index)."""
        with self._lock:
            self._pending.append((rows, label_index))
            self._pending_rows += len(rows)
            if self._pending_rows >= self._window:
                self._flush()

    def _flush(self) -> None:
        """Bin the queued batches into the windows; the caller holds the lock."""
        if not self._pending:
            return
        batches, self._pending, self._pending_rows = self._pending, [], 0
        rows = np.concatenate([matrix for matrix, _ in batches])
        for position, _, binner, window in self._features:
            window.add(binner(rows[:, position]))
        if self._labels is not None:
            labelled = [index for _, index in batches if index is not None]
            if labelled:
                self._labels.add(np.concatenate(labelled).astype(np.int64, copy=False))

    def refresh_due(self) -> bool:
        """True at most once per `refresh_seconds`: PSI is cheap, but not free on every request."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_refresh < self.refresh_seconds:
                return False
            self._last_refresh = now
            return True

    def feature_psi(self) -> dict[str, float]:
        with self._lock:
            self._flush()
            return {
                name: (window.psi() if window.seen >= self.min_rows else math.nan)
                for _, name, _, window in self._features
            }

    def prediction_psi(self) -> float:
        with self._lock:
            self._flush()
            if self._labels is None or self._labels.seen < self.min_rows:
                return math.nan
            return self._labels.psi()
