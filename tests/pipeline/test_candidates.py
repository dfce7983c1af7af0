"""The gradient-boosted trees (LightGBM, XGBoost, CatBoost) and the neural network (mlp) as candidates:
named in params.yaml with their own hyperparameters, cross-validated, and served as ONNX graphs that
answer as their pipelines do, on data with a categorical column that matters."""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from app.adapters.onnx_model import OnnxModel, disagreement, finite_rows
from app.core.artifacts import MISSING_CATEGORY, Feature
from app.core.loading import pipeline_answers
from app.pipeline.candidates import NATIVE_CATEGORICAL, build_estimator, build_pipeline
from app.pipeline.onnx_export import export
from app.pipeline.params import Params
from app.pipeline.xgboost_labels import LabelledXGBClassifier

NEW = ["lightgbm", "xgboost", "catboost", "mlp"]
# Small enough to fit in a fraction of a second each.
FAST: dict[str, dict] = {
    "lightgbm": {"n_estimators": 30},
    "xgboost": {"n_estimators": 30, "max_depth": 4},
    "catboost": {"iterations": 60, "depth": 4},
    # More, smaller steps than its defaults take (batches of 200 rows, 0.001): on 400 rows, early
    # stopping would end it before it learnt much.
    "mlp": {"batch_size": 32, "learning_rate_init": 0.01},
}
KINDS = [f"kind{i}" for i in range(8)]
FEATURES = [
    Feature(name="kind", type="categorical", categories=KINDS, missing_fraction=0.05),
    Feature(name="size", type="numeric", min=0.0, max=10.0, missing_fraction=0.05),
]
TASKS = ["regression", "binary", "multiclass"]
TRAINING_ROWS = 400


@cache
def kinds_data(task: str) -> tuple[np.ndarray, np.ndarray]:
    """A category that moves the target a lot (8 kinds: more than one-hot splits take), a number,
    gaps in both. The rows after TRAINING_ROWS are held out, with a kind never seen in training."""
    rng = np.random.default_rng(5)
    rows = TRAINING_ROWS + 100
    kind = rng.integers(0, len(KINDS), rows)
    size = rng.uniform(0, 10, rows)
    value = size + np.array([0, 6, -4, 9, 2, -7, 3, -1])[kind] + rng.normal(0, 0.5, rows)
    kinds = np.array(KINDS, dtype=object)[kind]
    kinds[rng.random(rows) < 0.05] = MISSING_CATEGORY
    kinds[TRAINING_ROWS::10] = "kind-never-seen"
    sizes = size.astype(object)
    sizes[rng.random(rows) < 0.05] = np.nan
    x = np.column_stack([kinds, sizes])
    if task == "regression":
        return x, value
    if task == "binary":
        return x, np.where(value > np.median(value), "high", "low")
    return x, np.array(["low", "middle", "high"])[np.digitize(value, np.quantile(value, [1 / 3, 2 / 3]))]


def _task(task: str) -> str:
    return "regression" if task == "regression" else "classification"


@cache
def fitted(task: str, name: str):
    x, y = kinds_data(task)
    pipeline = build_pipeline(name, _task(task), FAST[name], FEATURES, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlp: not converged in max_iter, maybe
        pipeline.fit(x[:TRAINING_ROWS], y[:TRAINING_ROWS])
    return pipeline


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", NEW)
def test_converts_to_onnx_that_answers_held_out_rows_as_the_pipeline(task: str, name: str):
    x, _ = kinds_data(task)
    pipeline = fitted(task, name)
    model = OnnxModel.from_bytes(export(pipeline, _task(task), FEATURES))  # the probe check passed
    held_out = x[TRAINING_ROWS:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = model(held_out), pipeline_answers(pipeline, _task(task))(held_out)
    assert finite_rows(ours, _task(task)).all()  # gaps and the unseen kind included
    assert disagreement(ours, theirs, _task(task)) is None


@pytest.mark.parametrize("name", ["lightgbm", "xgboost", "catboost"])
def test_boosted_trees_answer_rows_whose_standardised_value_overflows(name: str):
    # Their trees take the +-inf the scaler gives, in the graph as in the library: nothing is refused.
    pipeline = fitted("regression", name)
    model = OnnxModel.from_bytes(export(pipeline, "regression", FEATURES))
    assert model.spec.standardization is None
    rows = np.array([["kind1", 1.7976931348623157e308], ["kind2", -1e300], ["kind3", 5e-324]], dtype=object)
    ours, theirs = model(rows), pipeline_answers(pipeline, "regression")(rows)
    assert np.isfinite(ours).all() and disagreement(ours, theirs, "regression") is None


@pytest.mark.parametrize("task", ["regression", "multiclass"])
@pytest.mark.parametrize("name", NEW)
def test_cross_validation_fits_them_as_train_does(task: str, name: str, tmp_path: Path, monkeypatch):
    # train scores each candidate on clones of its pipeline (fit without arguments).
    monkeypatch.chdir(tmp_path)
    x, y = kinds_data(task)
    pipeline = build_pipeline(name, _task(task), FAST[name], FEATURES, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(pipeline, x[:TRAINING_ROWS], y[:TRAINING_ROWS], cv=3)
    # The category explains most of the target: every model should find it.
    assert np.all(scores > 0.5), scores
    assert list(tmp_path.iterdir()) == []  # no catboost_info/ or other training logs


def test_lightgbm_and_xgboost_split_on_the_categories_catboost_and_mlp_see_one_hot_columns():
    for name in NEW:
        encoder = fitted("regression", name).named_steps["preprocess"].named_transformers_["categorical"][-1]
        assert isinstance(encoder, OrdinalEncoder if name in NATIVE_CATEGORICAL else OneHotEncoder)
    assert set(NATIVE_CATEGORICAL) == {"lightgbm", "xgboost"}

    lightgbm = fitted("regression", "lightgbm").named_steps["model"].booster_.dump_model()
    decisions: list[tuple[str, str]] = []

    def walk(node: dict) -> None:
        if "decision_type" in node:
            decisions.append((node["decision_type"], str(node["threshold"])))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in lightgbm["tree_info"]:
        walk(tree["tree_structure"])
    # Category sets ("1||3||5"), which onnxmltools unfolds into chains of equality tests.
    assert any(kind == "==" and "||" in threshold for kind, threshold in decisions)

    xgboost = fitted("regression", "xgboost").named_steps["model"].get_booster()
    assert xgboost.feature_types == ["q", "c"]
    assert any(isinstance(n.get("split_condition"), list) for n in _xgboost_nodes(xgboost))

    # An unseen category's code, -1, is a missing value to both.
    for name in NATIVE_CATEGORICAL:
        model = fitted("regression", name).named_steps["model"]
        unseen = np.column_stack([np.linspace(-2, 2, 20), np.full(20, -1.0)])
        missing = np.column_stack([unseen[:, 0], np.full(20, np.nan)])
        np.testing.assert_array_equal(model.predict(unseen), model.predict(missing))


def _xgboost_nodes(booster) -> list[dict]:
    import json

    found = []

    def walk(node: dict) -> None:
        found.append(node)
        for child in node.get("children", []):
            walk(child)

    for tree in booster.get_dump(dump_format="json"):
        walk(json.loads(tree))
    return found


def test_each_takes_its_own_librarys_hyperparameter_names_and_the_seed():
    catboost = build_estimator("catboost", "regression", {"iterations": 10, "depth": 3}, seed=7)
    assert catboost.get_params()["iterations"] == 10 and catboost.get_params()["random_seed"] == 7
    lightgbm = build_estimator("lightgbm", "classification", {"num_leaves": 7}, seed=7)
    assert lightgbm.get_params()["num_leaves"] == 7 and lightgbm.get_params()["random_state"] == 7
    xgboost = build_estimator("xgboost", "regression", {"max_depth": 2}, seed=7)
    assert xgboost.get_params()["max_depth"] == 2 and xgboost.get_params()["random_state"] == 7
    mlp = build_estimator("mlp", "classification", {"hidden_layer_sizes": [8]}, seed=7)
    assert mlp.get_params()["early_stopping"] and mlp.get_params()["random_state"] == 7
    # CatBoost takes random_state as another name for its seed: a seed given so is not set twice.
    assert "random_seed" not in build_estimator("catboost", "regression", {"random_state": 3}, 7).get_params()
    for name, typo in [
        ("catboost", "iteration"),
        ("lightgbm", "num_leaf"),
        ("xgboost", "depth"),
        ("mlp", "layers"),
    ]:
        with pytest.raises(ValueError, match=f"train.candidates.{name}: unknown hyperparameter '{typo}'"):
            build_estimator(name, "regression", {typo: 1}, seed=0)


def test_params_yaml_names_them_for_either_task():
    params = Params.model_validate(
        {"train": {"candidates": {"classification": FAST, "regression": {"catboost": {"depth": 6}}}}}
    )
    assert list(params.train.candidates_for("classification")) == NEW
    assert params.train.candidates_for("regression") == {"catboost": {"depth": 6}}


def test_the_xgboost_classifier_answers_in_the_labels_it_was_fitted_on():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    model = LabelledXGBClassifier(n_estimators=5).fit(x, np.array(["b", "b", "c", "c", "a", "a"]))
    assert list(model.classes_) == ["a", "b", "c"]
    assert set(model.predict(x)) <= {"a", "b", "c"} and model.predict_proba(x).shape == (6, 3)
    model.fit(x, np.array(["y", "y", "z", "z", "x", "x"]))  # fitted again, on other labels
    assert list(model.classes_) == ["x", "y", "z"]
