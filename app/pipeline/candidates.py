"""The models train can fit, each wrapped with the preprocessing that makes it accept raw columns.

Pipelines select columns by position, not by name: serving then passes a numpy array built
straight from the validated request, with no DataFrame per call.

LightGBM, XGBoost and CatBoost are imported when their candidate is built, not with this module:
params.yaml's checks import it, and each of those libraries takes about a second to import.
"""

from __future__ import annotations

import inspect
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
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from app.core.artifacts import MISSING_CATEGORY, Feature

Factory = Callable[[], BaseEstimator]

# Gradient-boosted trees: quiet, and on one thread (small data gains nothing from more; n_jobs or
# thread_count in params.yaml give them more). Each library's own hyperparameter names apply.


def _lightgbm_classifier() -> BaseEstimator:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(verbose=-1, n_jobs=1)


def _lightgbm_regressor() -> BaseEstimator:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(verbose=-1, n_jobs=1)


def _xgboost_classifier() -> BaseEstimator:
    from app.pipeline.xgboost_labels import LabelledXGBClassifier

    return LabelledXGBClassifier(verbosity=0, n_jobs=1)


def _xgboost_regressor() -> BaseEstimator:
    from xgboost import XGBRegressor

    return XGBRegressor(verbosity=0, n_jobs=1)


def _catboost_classifier() -> BaseEstimator:
    from catboost import CatBoostClassifier

    # allow_writing_files=False: no catboost_info/ folder of training logs in the working directory.
    return CatBoostClassifier(verbose=0, thread_count=1, allow_writing_files=False)


def _catboost_regressor() -> BaseEstimator:
    from catboost import CatBoostRegressor

    return CatBoostRegressor(verbose=0, thread_count=1, allow_writing_files=False)


CLASSIFIERS: dict[str, Factory] = {
    "logistic_regression": lambda: LogisticRegression(max_iter=1000),
    "random_forest": lambda: RandomForestClassifier(n_estimators=100),
    # Calibrated so the API can answer class probabilities for every candidate.
    "svc": lambda: CalibratedClassifierCV(SVC(), ensemble=False),
    "decision_tree": DecisionTreeClassifier,
    "gradient_boosting": GradientBoostingClassifier,
    "knn": KNeighborsClassifier,
    "lightgbm": _lightgbm_classifier,
    "xgboost": _xgboost_classifier,
    "catboost": _catboost_classifier,
    # On the scaled columns build_pipeline gives every candidate; early stopping holds out 10% of
    # the rows it is fitted on and stops once their score no longer improves.
    "mlp": lambda: MLPClassifier(early_stopping=True),
}

REGRESSORS: dict[str, Factory] = {
    "linear_regression": LinearRegression,
    "ridge": Ridge,
    "random_forest": lambda: RandomForestRegressor(n_estimators=100),
    "svr": SVR,
    "decision_tree": DecisionTreeRegressor,
    "gradient_boosting": GradientBoostingRegressor,
    "knn": KNeighborsRegressor,
    "lightgbm": _lightgbm_regressor,
    "xgboost": _xgboost_regressor,
    "catboost": _catboost_regressor,
    "mlp": lambda: MLPRegressor(early_stopping=True),
}

ALL_CANDIDATES = set(CLASSIFIERS) | set(REGRESSORS)
# Candidates fed category codes rather than one-hot columns, which they split on sets of categories
# (onnxmltools converts those splits), and the parameters that say which columns hold the codes:
# (numeric columns, categorical columns) -> parameters, the codes coming last (build_preprocessing's
# order). Both libraries take a negative code (a category not seen in training) as missing. CatBoost's
# own ONNX export takes no categorical features: it gets one-hot columns, as the others do.
NATIVE_CATEGORICAL: dict[str, Callable[[int, int], dict[str, Any]]] = {
    # What LightGBM's fit(categorical_feature=...) sets. Given here, it holds through the clones
    # cross-validation fits, which pass fit no arguments.
    "lightgbm": lambda numeric, categorical: {
        "categorical_column": list(range(numeric, numeric + categorical))
    },
    "xgboost": lambda numeric, categorical: {
        "enable_categorical": True,
        "feature_types": ["q"] * numeric + ["c"] * categorical,
    },
}
# Each library's name for its seed, in the order looked for; CatBoost knows both (one seed, two names).
SEED_NAMES = ("random_seed", "random_state", "estimator__random_state")
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
    known = _hyperparameter_names(estimator)
    settings = {}
    for key, value in hyperparameters.items():
        # A wrapped estimator (svc's calibration) takes its inner model's names as they are.
        resolved = key if key in known else f"estimator__{key}"
        if resolved not in known:
            raise ValueError(f"{where}.{name}: unknown hyperparameter '{key}'")
        settings[resolved] = value
    seeds = [key for key in SEED_NAMES if key in known]
    if seeds and not settings.keys() & set(seeds):
        settings[seeds[0]] = seed
    estimator.set_params(**settings)
    return estimator


def _hyperparameter_names(estimator: BaseEstimator) -> set[str]:
    """What set_params takes: get_params' keys, and the constructor's arguments (CatBoost's
    get_params lists only the ones given a value)."""
    arguments = inspect.signature(type(estimator).__init__).parameters.values()
    named = {a.name for a in arguments if a.kind is a.KEYWORD_ONLY or a.kind is a.POSITIONAL_OR_KEYWORD}
    return (named - {"self"}) | set(estimator.get_params())


def build_preprocessing(features: list[Feature], category_codes: bool = False) -> ColumnTransformer:
    """Numeric columns imputed and scaled, then categorical ones imputed and one-hot encoded (or, with
    category_codes, as their codes in the fitted categories' order, -1 for one not seen)."""
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
                        (
                            ("codes", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1))
                            if category_codes
                            else ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))
                        ),
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
    codes = name in NATIVE_CATEGORICAL
    if codes:
        numeric = sum(f.type == "numeric" for f in features)
        estimator.set_params(**NATIVE_CATEGORICAL[name](numeric, len(features) - numeric))
    return Pipeline([("preprocess", build_preprocessing(features, codes)), ("model", estimator)])


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
