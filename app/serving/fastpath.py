"""A faster way through the pipelines train writes for all-numeric data, checked against sklearn.

scikit-learn validates its input at every step of a Pipeline: on one row, a logistic regression
spends most of its time in checks (~0.5 ms against ~20 µs of arithmetic), and a 100-tree forest
validates once per tree (~6 ms). Serving has already validated its input, so for the pipelines
train builds from numeric columns (median imputer -> standard scaler -> model) this module does
the same arithmetic with numpy and the trees' own compiled `predict`.

The compiled function is used only if it reproduces the pipeline's output on a probe batch at
load time; otherwise the pipeline serves as usual. Nothing here is trusted on faith.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit

# float32 is what sklearn's trees compute in: the same cast, the same splits.
_TREE_DTYPE = np.float32

Compiled = Callable[[np.ndarray], np.ndarray]


def _is(obj: object, module: str, name: str) -> bool:
    """isinstance without importing: unpickling the model already imported what it is made of,
    and importing sklearn.ensemble for a logistic regression would cost ~0.5 s of cold start."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(obj, cls)


def _tree_proba(tree: Any, x32: np.ndarray) -> np.ndarray:
    proba = tree.tree_.predict(x32)[:, : tree.n_classes_]
    normalizer = proba.sum(axis=1)[:, np.newaxis]
    normalizer[normalizer == 0.0] = 1.0
    return proba / normalizer


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _model_function(model: Any, task: str) -> Compiled | None:
    if task == "classification":
        if _is(model, "sklearn.linear_model", "LogisticRegression"):
            coef, intercept = model.coef_.T, model.intercept_
            if coef.shape[1] == 1:  # binary: one decision function, the logistic of it

                def binary_proba(x: np.ndarray) -> np.ndarray:
                    positive = expit(x @ coef + intercept)[:, 0]
                    return np.column_stack([1 - positive, positive])

                return binary_proba
            return lambda x: _softmax(x @ coef + intercept)
        if _is(model, "sklearn.ensemble", "RandomForestClassifier") and model.n_outputs_ == 1:
            trees = list(model.estimators_)

            def forest_proba(x: np.ndarray) -> np.ndarray:
                x32 = np.ascontiguousarray(x, dtype=_TREE_DTYPE)
                total = np.zeros((x.shape[0], model.n_classes_))
                for tree in trees:
                    total += _tree_proba(tree, x32)
                return total / len(trees)

            return forest_proba
        if _is(model, "sklearn.tree", "DecisionTreeClassifier") and model.n_outputs_ == 1:
            return lambda x: _tree_proba(model, np.ascontiguousarray(x, dtype=_TREE_DTYPE))
        if hasattr(model, "predict_proba"):
            return model.predict_proba  # one validation instead of one per pipeline step
        return None
    if _is(model, "sklearn.ensemble", "RandomForestRegressor") and model.n_outputs_ == 1:
        trees = [t.tree_ for t in model.estimators_]

        def forest_value(x: np.ndarray) -> np.ndarray:
            x32 = np.ascontiguousarray(x, dtype=_TREE_DTYPE)
            total = np.zeros(x.shape[0])
            for tree in trees:
                total += tree.predict(x32)[:, 0]
            return total / len(trees)

        return forest_value
    if (
        _is(model, "sklearn.linear_model", "LinearRegression") or _is(model, "sklearn.linear_model", "Ridge")
    ) and np.ndim(model.coef_) == 1:
        coef, intercept = model.coef_, model.intercept_
        return lambda x: x @ coef + intercept
    if _is(model, "sklearn.tree", "DecisionTreeRegressor") and model.n_outputs_ == 1:
        return lambda x: model.tree_.predict(np.ascontiguousarray(x, dtype=_TREE_DTYPE))[:, 0]
    return model.predict


def compile_pipeline(pipeline: Any, task: str) -> Compiled | None:
    """Probabilities (classification) or values (regression), or None when the shape is unknown."""
    if not _is(pipeline, "sklearn.pipeline", "Pipeline") or len(pipeline.steps) != 3:
        return None
    (_, imputer), (_, scaler), (_, model) = pipeline.steps
    if not (
        _is(imputer, "sklearn.impute", "SimpleImputer")
        and _is(scaler, "sklearn.preprocessing", "StandardScaler")
    ):
        return None
    if imputer.add_indicator or not np.isnan(imputer.missing_values):
        return None
    fill = np.asarray(imputer.statistics_, dtype=np.float64)
    mean = np.asarray(scaler.mean_ if scaler.with_mean else np.zeros_like(fill), dtype=np.float64)
    scale = np.asarray(scaler.scale_ if scaler.with_std else np.ones_like(fill), dtype=np.float64)
    if fill.shape != mean.shape or np.isnan(fill).any():
        return None
    model_function = _model_function(model, task)
    if model_function is None:
        return None

    def run(x: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(x), fill, x)
        return model_function((x - mean) / scale)

    return run


def verified(compiled: Compiled | None, reference: Compiled, probe: np.ndarray) -> Compiled | None:
    """`compiled` if it gives the reference's answers on the probe batch (to 1e-9), else None."""
    if compiled is None:
        return None
    try:
        ours, theirs = compiled(probe), reference(probe)
    except Exception:  # a shape we did not foresee: the pipeline serves instead
        return None
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=0, atol=1e-9):
        return None
    return compiled
