"""The reference profile of the training data: serving checks inputs and measures drift against it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.core.artifacts import (
    CategoricalProfile,
    Feature,
    NumericProfile,
    ReferenceProfile,
    TargetProfile,
    Task,
)


def bin_proportions(values: np.ndarray, edges: list[float]) -> list[float]:
    """Share of values in each bin (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return [round(float(c), 6) for c in counts / max(len(values), 1)]


def _numeric(column: pd.Series, bins: int) -> NumericProfile:
    present = column.dropna().to_numpy(dtype=float)
    # Quantile cut points; repeated values (discrete features) collapse duplicate edges.
    inner = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges = [round(float(e), 6) for e in np.unique(inner)]
    return NumericProfile(
        count=len(present),
        missing_fraction=round(float(column.isna().mean()), 6),
        min=float(present.min()),
        max=float(present.max()),
        mean=round(float(present.mean()), 6),
        std=round(float(present.std(ddof=0)), 6),
        bin_edges=edges,
        bin_proportions=bin_proportions(present, edges),
    )


def _categorical(column: pd.Series) -> CategoricalProfile:
    present = column.dropna()
    shares = present.value_counts(normalize=True).sort_index()
    return CategoricalProfile(
        count=len(present),
        missing_fraction=round(float(column.isna().mean()), 6),
        proportions={str(k): round(float(v), 6) for k, v in shares.items()},
    )


def _target(column: pd.Series, name: str, task: Task) -> TargetProfile:
    if task == "classification":
        shares = column.value_counts(normalize=True).sort_index()
        return TargetProfile(
            name=name, task=task, class_balance={str(k): round(float(v), 6) for k, v in shares.items()}
        )
    values = column.to_numpy(dtype=float)
    return TargetProfile(
        name=name,
        task=task,
        min=float(values.min()),
        max=float(values.max()),
        mean=round(float(values.mean()), 6),
        std=round(float(values.std(ddof=0)), 6),
    )


def build_profile(
    train: pd.DataFrame, features: list[Feature], target: str, task: Task, bins: int
) -> ReferenceProfile:
    profiles = {
        f.name: _numeric(train[f.name], bins) if f.type == "numeric" else _categorical(train[f.name])
        for f in features
    }
    return ReferenceProfile(rows=len(train), features=profiles, target=_target(train[target], target, task))


def describe_features(train: pd.DataFrame, features: list[Feature]) -> list[Feature]:
    """The feature schema with what serving validates: ranges and categories seen in training."""
    described = []
    for f in features:
        column = train[f.name]
        extra: dict = {"missing_fraction": round(float(column.isna().mean()), 6)}
        if f.type == "numeric":
            extra |= {"min": float(column.min()), "max": float(column.max())}
        else:
            extra["categories"] = sorted(str(v) for v in column.dropna().unique())
        described.append(f.model_copy(update=extra))
    return described
