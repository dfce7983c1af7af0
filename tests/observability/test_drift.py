"""PSI against the training profile: zero-ish for look-alike data, large for shifted data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.core.artifacts import Feature, ReferenceProfile, TargetProfile
from app.observability.drift import BinnedWindow, DriftMonitor, psi
from app.pipeline.profile import build_profile, describe_features

RNG = np.random.default_rng(0)


def reference(n: int = 2000) -> tuple[ReferenceProfile, list[Feature], list[str]]:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "x": RNG.normal(0, 1, n),
            "colour": RNG.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
            "y": RNG.choice(["a", "b"], n, p=[0.7, 0.3]),
        }
    )
    features = describe_features(
        frame, [Feature(name="x", type="numeric"), Feature(name="colour", type="categorical")]
    )
    return build_profile(frame, features, "y", "classification", bins=10), features, ["a", "b"]


def batch(n: int, shift: float = 0.0, colours=("red", "green", "blue"), p=(0.5, 0.3, 0.2)) -> np.ndarray:
    return np.array(
        [[float(x), c] for x, c in zip(RNG.normal(shift, 1, n), RNG.choice(colours, n, p=p), strict=True)],
        dtype=object,
    )


def test_psi_formula():
    assert psi(np.array([0.5, 0.5]), np.array([50, 50])) == pytest.approx(0.0)
    # Textbook example: 0.5/0.5 against 0.9/0.1.
    assert psi(np.array([0.5, 0.5]), np.array([90, 10])) == pytest.approx(
        0.4 * np.log(1.8) + (-0.4) * np.log(0.2)
    )
    assert math.isnan(psi(np.array([0.5, 0.5]), np.array([0, 0])))


def test_window_forgets_old_values():
    window = BinnedWindow([0.5, 0.5], size=4)
    window.add(np.array([0, 0, 0]))
    window.add(np.array([1, 1, 1]))
    assert window.counts.tolist() == [1, 3]
    window.add(np.array([1, 1, 1, 1, 1, 0]))  # larger than the window: only the last 4 stay
    assert window.counts.tolist() == [1, 3]
    assert window.seen == 12


def positions(classes: list[str], labels: list[str]) -> np.ndarray:
    """The labels as Answers.label_index gives them: their positions in the classes."""
    return np.array([classes.index(label) for label in labels])


def test_same_distribution_is_stable_shifted_one_drifts():
    profile, features, classes = reference()
    monitor = DriftMonitor(profile, features, classes, window=500, min_rows=100)
    assert all(math.isnan(v) for v in monitor.feature_psi().values())  # not enough rows yet
    monitor.observe(batch(500), positions(classes, ["a"] * 350 + ["b"] * 150))
    stable = monitor.feature_psi()
    assert stable["x"] < 0.1 and stable["colour"] < 0.1
    assert monitor.prediction_psi() < 0.1

    monitor.observe(
        batch(500, shift=2.0, colours=("red", "purple"), p=(0.2, 0.8)), positions(classes, ["b"] * 500)
    )
    drifted = monitor.feature_psi()
    assert drifted["x"] > 0.2 and drifted["colour"] > 0.2
    assert monitor.prediction_psi() > 0.2


def test_missing_values_are_left_out():
    profile, features, classes = reference()
    monitor = DriftMonitor(profile, features, classes, window=200, min_rows=10)
    rows = batch(100)
    rows[:50, 0] = np.nan
    rows[:50, 1] = None
    monitor.observe(rows)
    assert monitor.feature_psi()["x"] < 0.3


def test_regression_has_no_prediction_drift():
    profile, features, _ = reference()
    profile = profile.model_copy(
        update={"target": TargetProfile(name="y", task="regression", min=0, max=1, mean=0, std=1)}
    )
    monitor = DriftMonitor(profile, features, [], window=100, min_rows=1)
    monitor.observe(batch(10))
    assert math.isnan(monitor.prediction_psi())


def test_batches_queue_until_read_or_a_window_is_pending():
    profile, features, classes = reference()
    monitor = DriftMonitor(profile, features, classes, window=100, min_rows=10)
    monitor.observe(batch(40))
    assert monitor._pending_rows == 40  # queued, not binned yet: requests stay cheap
    monitor.observe(batch(70))
    assert monitor._pending_rows == 0  # a window's worth arrived: binned at once, memory bounded
    monitor.observe(batch(5), positions(classes, ["a"] * 5))
    assert not math.isnan(monitor.feature_psi()["x"])
    assert monitor._pending_rows == 0
