"""Drift per feature over a set of logged inputs: the training histogram beside the inputs' shares in
the same bins, and their PSI, for GET /monitoring.

The live gauges (drift.py) follow one replica's traffic; these are computed from the prediction log,
so every replica answers the same. The bins are the live monitor's (reference_bins), and missing
values are left out as there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.artifacts import CategoricalProfile, ReferenceProfile
from app.observability.drift import psi, reference_bins


@dataclass(frozen=True)
class FeatureHistogram:
    feature: str
    type: str  # numeric or categorical
    bins: list[str]
    training: list[float]  # the training share per bin
    recent: list[float]  # the inputs' share per bin (all 0 when none had a value)
    rows: int  # inputs with a value for this feature
    psi: float  # NaN when `rows` is 0


def feature_histograms(
    profile: ReferenceProfile, features: Sequence[str], inputs: Sequence[Mapping[str, Any]]
) -> list[FeatureHistogram]:
    """One histogram per feature the profile knows, in the order of `features`."""
    found = []
    for name in features:
        reference = profile.features.get(name)
        if reference is None:
            continue
        bins = reference_bins(reference)
        values = [row.get(name) for row in inputs]
        if isinstance(reference, CategoricalProfile):
            column = np.array(values, dtype=object)
        else:
            column = np.array([_number(v) for v in values], dtype=float)
        counts = np.bincount(bins.binner(column), minlength=len(bins.expected))
        total = int(counts.sum())
        found.append(
            FeatureHistogram(
                feature=name,
                type=reference.type,
                bins=bins.names,
                training=bins.expected,
                recent=[float(c) / total if total else 0.0 for c in counts],
                rows=total,
                psi=psi(np.asarray(bins.expected), counts),
            )
        )
    return found


def _number(value: Any) -> float:
    # The log keeps a missing value as null; anything else that is not a number counts as missing too.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)
