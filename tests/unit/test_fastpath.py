"""The compiled serving path gives the pipeline's own answers, or is not used at all."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from app.core.artifacts import Feature
from app.pipeline.candidates import CLASSIFIERS, REGRESSORS, build_pipeline
from app.serving.fastpath import compile_pipeline, verified

DATA = {
    "multiclass": ("classification", load_iris(return_X_y=True)),
    "binary": ("classification", load_breast_cancer(return_X_y=True)),
    "regression": ("regression", load_diabetes(return_X_y=True)),
}
CASES = [(kind, name) for kind in ("multiclass", "binary") for name in CLASSIFIERS] + [
    ("regression", name) for name in REGRESSORS
]


def fitted(kind: str, name: str):
    task, (x, y) = DATA[kind]
    features = [Feature(name=f"f{i}", type="numeric") for i in range(x.shape[1])]
    hyper = {"n_estimators": 10} if "forest" in name or "boosting" in name else {}
    return task, x, build_pipeline(name, task, hyper, features, seed=0).fit(x, y)


def inputs(x: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    span = x.max(axis=0) - x.min(axis=0)
    rows = rng.uniform(x.min(axis=0) - span, x.max(axis=0) + span, size=(200, x.shape[1]))
    rows[rng.random(rows.shape) < 0.1] = np.nan
    return rows


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_compiled_path_matches_the_pipeline(kind: str, name: str):
    task, x, pipeline = fitted(kind, name)
    reference = pipeline.predict_proba if task == "classification" else pipeline.predict
    compiled = verified(compile_pipeline(pipeline, task), reference, inputs(x)[:64])
    assert compiled is not None
    rows = inputs(x)
    np.testing.assert_allclose(compiled(rows), reference(rows), rtol=0, atol=1e-9)
    np.testing.assert_allclose(compiled(rows[:1]), reference(rows[:1]), rtol=0, atol=1e-9)


def test_pipelines_with_categories_are_not_compiled():
    features = [Feature(name="a", type="numeric"), Feature(name="b", type="categorical")]
    pipeline = build_pipeline("logistic_regression", "classification", {}, features, seed=0)
    x = np.array([[1.0, "x"], [2.0, "y"], [3.0, "x"], [4.0, "y"]], dtype=object)
    pipeline.fit(x, ["p", "q", "p", "q"])
    assert compile_pipeline(pipeline, "classification") is None


def test_a_compiled_path_that_disagrees_is_refused():
    _, x, pipeline = fitted("multiclass", "logistic_regression")
    wrong = lambda rows: pipeline.predict_proba(rows)[:, ::-1]  # noqa: E731
    assert verified(wrong, pipeline.predict_proba, inputs(x)[:64]) is None
    broken = lambda rows: 1 / 0  # noqa: E731
    assert verified(broken, pipeline.predict_proba, inputs(x)[:64]) is None
