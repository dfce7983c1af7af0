"""The models train can fit, each wrapped with the preprocessing that makes it accept raw columns.

Pipelines select columns by position, not by name: serving then passes a numpy array built
straight from the validated request, with no DataFrame per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from app.core.artifacts import MISSING_CATEGORY, Feature

Factory = Callable[[], BaseEstimator]

CLASSIFIERS: dict[str, Factory] = {
    "logistic_regression": lambda: LogisticRegression(max_iter=1000),
    "random_forest": lambda: RandomForestClassifier(n_estimators=100),
    # Calibrated so the API can answer class probabilities for every candidate.
    "svc": lambda: CalibratedClassifierCV(SVC(), ensemble=False),
    "decision_tree": DecisionTreeClassifier,
    "gradient_boosting": GradientBoostingClassifier,
    "knn": KNeighborsClassifier,
}

REGRESSORS: dict[str, Factory] = {
    "linear_regression": LinearRegression,
    "ridge": Ridge,
    "random_forest": lambda: RandomForestRegressor(n_estimators=100),
    "svr": SVR,
    "decision_tree": DecisionTreeRegressor,
    "gradient_boosting": GradientBoostingRegressor,
    "knn": KNeighborsRegressor,
}

ALL_CANDIDATES = set(CLASSIFIERS) | set(REGRESSORS)
_BY_TASK: dict[str, dict[str, Factory]] = {"classification": CLASSIFIERS, "regression": REGRESSORS}

# What train fits when params.yaml names no candidates for the data's task (`candidates: auto`,
# or a per-task form that leaves the task out); params.yaml spells out the same lists. A few models
# of different kinds per task, each quick to fit on small data (the test suite fits them often).
DEFAULT_CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        "logistic_regression": {"C": 1.0, "max_iter": 1000},
        "random_forest": {"n_estimators": 100},
        "svc": {"C": 1.0, "kernel": "rbf"},
        "decision_tree": {"max_depth": 5},
    },
    "regression": {
        "ridge": {"alpha": 1.0},
        "random_forest": {"n_estimators": 100},
        "gradient_boosting": {"n_estimators": 100},
        "decision_tree": {"max_depth": 5},
    },
}


def candidate_problem(name: str, task: str) -> str | None:
    """Why `name` cannot be a candidate for this task, or None when it can."""
    registry = _BY_TASK[task]
    if name in registry:
        return None
    if name in ALL_CANDIDATES:
        return f"'{name}' does not do {task} (use one of {', '.join(sorted(registry))})"
    return f"unknown candidate '{name}' (known: {', '.join(sorted(registry))})"


def build_estimator(
    name: str, task: str, hyperparameters: dict[str, Any], seed: int, where: str = "train.candidates"
) -> BaseEstimator:
    """The bare estimator; raises ValueError naming the candidate or hyperparameter at fault, under
    `where`, the params.yaml key the candidates came from."""
    problem = candidate_problem(name, task)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    estimator = _BY_TASK[task][name]()
    known = estimator.get_params()
    settings = {}
    for key, value in hyperparameters.items():
        # A wrapped estimator (svc's calibration) takes its inner model's names as they are.
        resolved = key if key in known else f"estimator__{key}"
        if resolved not in known:
            raise ValueError(f"{where}.{name}: unknown hyperparameter '{key}'")
        settings[resolved] = value
    for seeded in ("random_state", "estimator__random_state"):
        if seeded in known and seeded not in settings:
            settings[seeded] = seed
    estimator.set_params(**settings)
    return estimator


def build_preprocessing(features: list[Feature]) -> ColumnTransformer:
    numeric = [i for i, f in enumerate(features) if f.type == "numeric"]
    categorical = [i for i, f in enumerate(features) if f.type == "categorical"]
    transformers = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                numeric,
            )
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        # The gap marker as a string, so the imputer converts to ONNX.
                        ("impute", SimpleImputer(strategy="most_frequent", missing_values=MISSING_CATEGORY)),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    return ColumnTransformer(transformers, remainder="drop")


def build_pipeline(
    name: str,
    task: str,
    hyperparameters: dict[str, Any],
    features: list[Feature],
    seed: int,
    where: str = "train.candidates",
) -> Pipeline:
    estimator = build_estimator(name, task, hyperparameters, seed, where)
    if all(f.type == "numeric" for f in features):
        # No ColumnTransformer when every column gets the same treatment: it costs ~0.4 ms
        # per predict call, more than a logistic regression itself (measured on one row).
        return Pipeline(
            [
                ("impute", SimpleImputer(strategy="median")),
                ("scale", StandardScaler()),
                ("model", estimator),
            ]
        )
    return Pipeline([("preprocess", build_preprocessing(features)), ("model", estimator)])


@dataclass
class Fitted:
    """A fitted candidate, its scores, and (once tracked) its MLflow run."""

    name: str
    pipeline: Pipeline
    hyperparameters: dict[str, Any]
    cv_score: float
    metrics: dict[str, float]
    run_id: str | None = None
    model_uri: str | None = None
