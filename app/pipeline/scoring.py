"""Evaluation metrics by task, and which direction is better for each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class Metric:
    task: str
    greater_is_better: bool
    # The scorer name sklearn's cross-validation understands.
    scorer: str


ALL_METRICS: dict[str, Metric] = {
    "accuracy": Metric("classification", True, "accuracy"),
    "f1_macro": Metric("classification", True, "f1_macro"),
    "precision_macro": Metric("classification", True, "precision_macro"),
    "recall_macro": Metric("classification", True, "recall_macro"),
    "roc_auc": Metric("classification", True, "roc_auc_ovr"),
    "mae": Metric("regression", False, "neg_mean_absolute_error"),
    "mse": Metric("regression", False, "neg_mean_squared_error"),
    "rmse": Metric("regression", False, "neg_root_mean_squared_error"),
    "r2": Metric("regression", True, "r2"),
}

DEFAULT_METRIC = {"classification": "f1_macro", "regression": "r2"}


def resolve_metric(name: str, task: str) -> str:
    if name == "auto":
        return DEFAULT_METRIC[task]
    if ALL_METRICS[name].task != task:
        usable = ", ".join(m for m, spec in ALL_METRICS.items() if spec.task == task)
        raise ValueError(f"train.metric: '{name}' is a {ALL_METRICS[name].task} metric; use one of {usable}")
    return name


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: list[str]
) -> dict[str, float]:
    scores = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "precision_macro": skm.precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
    }
    if proba is not None and len(set(y_true)) > 1:
        if len(classes) == 2:
            scores["roc_auc"] = skm.roc_auc_score(y_true == classes[1], proba[:, 1])
        elif len(set(y_true)) == len(classes):
            scores["roc_auc"] = skm.roc_auc_score(
                y_true, proba, multi_class="ovr", average="macro", labels=classes
            )
    return {name: round(float(value), 6) for name, value in scores.items()}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    mse = skm.mean_squared_error(y_true, y_pred)
    scores = {
        "mae": skm.mean_absolute_error(y_true, y_pred),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": skm.r2_score(y_true, y_pred),
    }
    return {name: round(float(value), 6) for name, value in scores.items()}


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    return candidate > incumbent if ALL_METRICS[metric].greater_is_better else candidate < incumbent
