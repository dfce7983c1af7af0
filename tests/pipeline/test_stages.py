"""The three stages as DVC runs them (python -m ...), on Iris and on generated data sets."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from app.adapters.onnx_model import OnnxModel, disagreement
from app.core.artifacts import MISSING_CATEGORY, ModelMetadata, ReferenceProfile, matrix_dtype, sha256_of
from app.core.loading import pipeline_answers
from tests.support.pipeline import DEFAULT_PARAMS, customer_frame, run_stage, write_params

pytestmark = pytest.mark.slow


def run_pipeline(folder: Path) -> ModelMetadata:
    for stage in ("prepare", "train", "evaluate"):
        run_stage(stage, folder)
    return ModelMetadata.read(folder / "models")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("iris")
    write_params(folder)
    run_pipeline(folder)
    return folder


def test_iris_champion_is_accurate_and_its_metrics_are_reported(iris: Path):
    metrics = json.loads((iris / "data/evaluation/metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    assert set(metrics) == {"accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc"}
    assert (iris / "data/evaluation/plots/confusion_matrix.png").stat().st_size > 1000
    per_class = (iris / "data/evaluation/plots/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and len(per_class) == 4


def test_iris_metadata_describes_the_model_file(iris: Path):
    meta = ModelMetadata.read(iris / "models")
    assert meta.sha256 == sha256_of(iris / "models/model.joblib")
    assert meta.task == "classification" and meta.classes == ["setosa", "versicolor", "virginica"]
    assert meta.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    sepal = meta.features[0]
    assert sepal.type == "numeric" and 4 <= sepal.min < sepal.max <= 8
    assert meta.metrics["accuracy"] >= 0.9
    assert meta.params["train"]["candidates"].keys() == {
        "logistic_regression",
        "random_forest",
        "svc",
        "decision_tree",
    }
    assert len(meta.data_md5) == 32 and meta.version == meta.trained_at[:19].replace(":", "-")
    assert meta.python_version and meta.sklearn_version
    # Every candidate is kept, with a checksum, for side-by-side comparison.
    assert [c.name for c in meta.candidates] == list(meta.params["train"]["candidates"])
    for candidate in meta.candidates:
        assert sha256_of(iris / "models" / candidate.path) == candidate.sha256


def test_iris_onnx_files_give_each_candidates_answers(iris: Path):
    meta = ModelMetadata.read(iris / "models")
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, np.nan, 2.3], [50.0, -3.0, 0.0, 9.0]])
    graphs = {c.name: c.onnx for c in meta.candidates}
    assert all(graphs.values()), {c.name: c.onnx_error for c in meta.candidates}
    for candidate in meta.candidates:
        graph = iris / "models" / candidate.onnx.path
        assert sha256_of(graph) == candidate.onnx.sha256
        model = OnnxModel.from_bytes(graph.read_bytes())
        pipeline = joblib.load(iris / "models" / candidate.path)
        np.testing.assert_allclose(model(rows), pipeline.predict_proba(rows), rtol=0, atol=1e-6)
    # The champion's graph sits beside model.joblib, as model.onnx.
    assert meta.onnx is not None
    assert meta.onnx.path == "model.onnx" and meta.onnx.sha256 == graphs[meta.name].sha256


def test_iris_model_takes_a_raw_numpy_array(iris: Path):
    meta = ModelMetadata.read(iris / "models")
    model = joblib.load(iris / "models/model.joblib")
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=matrix_dtype(meta.features))
    assert list(model.predict(rows)) == ["setosa", "virginica"]
    assert model.predict_proba(rows).shape == (2, 3)


def test_iris_profile_has_bins_for_drift(iris: Path):
    profile = ReferenceProfile.model_validate_json((iris / "models/reference_profile.json").read_text())
    petal = profile.features["petal_length"]
    assert len(petal.bin_proportions) == len(petal.bin_edges) + 1
    assert sum(petal.bin_proportions) == pytest.approx(1.0, abs=1e-3)
    assert profile.target.class_balance == pytest.approx(
        {"setosa": 1 / 3, "versicolor": 1 / 3, "virginica": 1 / 3}
    )


def test_iris_runs_are_tracked_and_the_champion_registered(iris: Path):
    meta = ModelMetadata.read(iris / "models")
    client = MlflowClient(tracking_uri=f"sqlite:///{iris / 'mlflow.db'}")
    runs = client.search_runs([meta.mlflow_experiment])
    assert sorted(r.data.tags["candidate"] for r in runs) == sorted(c.name for c in meta.candidates)
    for run in runs:
        assert run.data.tags["data_md5"] == meta.data_md5 and "git_commit" in run.data.tags
        assert "cv_f1_macro" in run.data.metrics and "test_accuracy" in run.data.metrics
    champion = client.get_model_version_by_alias("predictor", "champion")
    assert str(champion.version) == meta.registered_version and champion.run_id == meta.mlflow_run_id
    champion_run = client.get_run(meta.mlflow_run_id)
    assert "eval_accuracy" in champion_run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(meta.mlflow_run_id, "evaluation")]
    assert "evaluation/confusion_matrix.png" in artifacts


def test_stages_print_what_they_do(iris: Path):
    out = run_stage("prepare", iris).stdout
    assert "prepare: 150 rows, task=classification, target=species" in out
    assert "split 120 train / 30 test" in out


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_generated_data_with_categories_and_missing_values(project: Path, task: str):
    target = "churn" if task == "classification" else "spend"
    customer_frame(400, task).to_csv(project / "data/input/customers.csv", index=False)
    candidates = (
        {"logistic_regression": {}, "random_forest": {"n_estimators": 30}, "svc": {}, "decision_tree": {}}
        if task == "classification"
        else {
            "ridge": {},
            "random_forest": {"n_estimators": 30},
            "svr": {},
            "decision_tree": {"max_depth": 4},
        }
    )
    write_params(
        project,
        data={"source": "data/input/customers.csv", "target": target},
        train={"candidates": candidates},
    )
    meta = run_pipeline(project)
    assert meta.task == task
    types = {f.name: f.type for f in meta.features}
    assert types == {"age": "numeric", "income": "numeric", "city": "categorical", "plan": "categorical"}
    assert meta.features[2].categories == ["lille", "lyon", "nantes", "paris"]

    metrics = json.loads((project / "data/evaluation/metrics.json").read_text())
    if task == "classification":
        assert meta.classes == ["no", "yes"] and metrics["accuracy"] > 0.6
        assert (project / "data/evaluation/plots/confusion_matrix.png").exists()
    else:
        assert set(metrics) == {"mae", "mse", "rmse", "r2"} and metrics["r2"] > 0.5
        assert (project / "data/evaluation/plots/predicted_vs_actual.png").exists()

    # Serving passes raw values, missing and unseen categories included.
    model = joblib.load(project / "models/model.joblib")
    rows = np.array(
        [[35.0, 20000.0, "paris", "pro"], [np.nan, 1.0, None, "basic"], [50, 3e4, "tokyo", "plus"]],
        dtype=object,
    )
    assert len(model.predict(rows)) == 3


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_boosted_trees_and_the_network_train_and_serve_as_onnx(project: Path, task: str):
    target = "churn" if task == "classification" else "spend"
    customer_frame(200, task).to_csv(project / "data/input/customers.csv", index=False)
    candidates = {
        "lightgbm": {"n_estimators": 30},
        "xgboost": {"n_estimators": 30},
        "catboost": {"iterations": 50},
        "mlp": {"batch_size": 32},
    }
    write_params(
        project,
        data={"source": "data/input/customers.csv", "target": target},
        train={"candidates": candidates, "cv_folds": 3},
    )
    for stage in ("prepare", "train"):
        run_stage(stage, project)
    meta = ModelMetadata.read(project / "models")
    assert [c.name for c in meta.candidates] == list(candidates)
    assert all(c.onnx for c in meta.candidates), {c.name: c.onnx_error for c in meta.candidates}
    # Raw rows as serving passes them: a gap in each kind of column, a city never seen.
    rows = np.array(
        [
            [35.0, 20000.0, "paris", "pro"],
            [np.nan, 1.0, MISSING_CATEGORY, "basic"],
            [50.0, 3e4, "tokyo", "plus"],
        ],
        dtype=object,
    )
    for candidate in meta.candidates:
        assert candidate.onnx is not None
        model = OnnxModel.from_bytes((project / "models" / candidate.onnx.path).read_bytes())
        answer = pipeline_answers(joblib.load(project / "models" / candidate.path), meta.task)
        assert disagreement(model(rows), answer(rows), meta.task) is None
    assert not (project / "catboost_info").exists()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_projects_params_fit_whichever_task_a_csv_has(project: Path, task: str):
    # The README's "Your own data": only data.source and data.target change.
    target = "churn" if task == "classification" else "spend"
    customer_frame(120, task).to_csv(project / "data/input/customers.csv", index=False)
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["data"].update(source="data/input/customers.csv", target=target)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("prepare", "train"):
        run_stage(stage, project)
    meta = ModelMetadata.read(project / "models")
    assert meta.task == task
    assert meta.metric == ("f1_macro" if task == "classification" else "r2")
    assert [c.name for c in meta.candidates] == list(DEFAULT_PARAMS["train"]["candidates"][task])


def test_train_refuses_candidates_of_another_task(project: Path):
    customer_frame(60, "regression").to_csv(project / "data/input/customers.csv", index=False)
    data = {"source": "data/input/customers.csv", "target": "spend"}
    write_params(project, data=data)
    run_stage("prepare", project)
    # A classifier named explicitly in a flat list is not swapped for a regressor.
    write_params(project, data=data, train={"candidates": {"logistic_regression": {}}})
    assert_refused(
        run_stage("train", project, check=False),
        "train: error:",
        "train.candidates: 'logistic_regression' does not do regression",
    )
    per_task = DEFAULT_PARAMS["train"]["candidates"]
    write_params(project, data=data, train={"candidates": per_task, "champion": "svc"})
    assert_refused(
        run_stage("train", project, check=False),
        "train.champion: 'svc' is not one of train.candidates.regression (the data does regression)",
    )
    write_params(
        project, data=data, train={"candidates": {**per_task, "regression": {"ridge": {"depth": 3}}}}
    )
    assert_refused(
        run_stage("train", project, check=False),
        "train.candidates.regression.ridge: unknown hyperparameter 'depth'",
    )
    assert not (project / "models").exists()


def test_forced_champion(iris: Path, tmp_path: Path):
    # The iris run's prepared data (the same data params): only train is under test here.
    project = tmp_path / "forced"
    shutil.copytree(iris / "data" / "processed", project / "data" / "processed")
    write_params(project, train={"champion": "decision_tree"})
    run_stage("train", project)
    meta = ModelMetadata.read(project / "models")
    assert meta.name == "decision_tree"
    # The champion is written as ONNX too: serving then skips scikit-learn.
    assert meta.onnx is not None
    assert sha256_of(project / "models" / "model.onnx") == meta.onnx.sha256


def assert_refused(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("csv", "data", "fragments"),
    [
        ("a,b\n1,2\n3,4\n", {"target": "label"}, ["prepare: error:", "target column 'label' not found"]),
        ("a,y\n1,x\nabc,x\n3,z\n4,z\n5,z\n", {"target": "y"}, ["column 'a' is numeric but line 3 has 'abc'"]),
        ("", {"target": "y"}, ["the file is empty"]),
        ("a,y\n1,x\n2,x\n3,x\n", {"target": "y"}, ["has one class only"]),
    ],
)
def test_prepare_refuses_bad_data_and_writes_nothing(project: Path, csv, data, fragments):
    (project / "data/input/bad.csv").write_text(csv)
    write_params(project, data={"source": "data/input/bad.csv", **data})
    assert_refused(run_stage("prepare", project, check=False), *fragments)
    assert not (project / "data/processed").exists()
    assert not (project / "data/raw").exists()


def test_train_refuses_bad_params_and_keeps_the_previous_model(iris: Path, tmp_path: Path):
    before = sha256_of(iris / "models/model.joblib")
    params = (iris / "params.yaml").read_text()
    try:
        (iris / "params.yaml").write_text(params.replace("decision_tree:", "decision_trees:"))
        assert_refused(
            run_stage("train", iris, check=False), "train: error:", "unknown candidate 'decision_trees'"
        )
        write_params(iris, train={"candidates": {"svr": {}}})
        assert_refused(run_stage("train", iris, check=False), "'svr' does not do classification")
        write_params(iris, train={"candidates": {"random_forest": {"n_trees": 3}}})
        assert_refused(
            run_stage("train", iris, check=False),
            "train.candidates.random_forest: unknown hyperparameter 'n_trees'",
        )
        write_params(iris, train={"metric": "r2"})
        assert_refused(run_stage("train", iris, check=False), "'r2' is a regression metric")
    finally:
        (iris / "params.yaml").write_text(params)
    assert sha256_of(iris / "models/model.joblib") == before
    assert not list((iris).glob(".models.*"))
