"""prepare's checks, in-process: each bad input is refused with a message that names the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.pipeline.candidates import DEFAULT_CANDIDATES
from app.pipeline.dataset import RawData, load_source, parse
from app.pipeline.errors import PipelineError
from app.pipeline.params import DataParams, Params
from tests.support.paths import ROOT
from tests.support.pipeline import DEFAULT_PARAMS, customer_frame, write_params


def raw(text: str) -> RawData:
    return RawData(name="data.csv", csv_bytes=text.encode())


def params(**fields) -> DataParams:
    return DataParams(source="data.csv", **fields)


def test_iris_loads_with_snake_case_columns_and_named_labels():
    data = parse(load_source(DataParams()), DataParams(target="species"))
    assert [f.name for f in data.features] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert data.task == "classification"
    assert data.classes == ["setosa", "versicolor", "virginica"]
    assert all(f.type == "numeric" for f in data.features)


def test_types_and_missing_values_are_inferred():
    frame = customer_frame(120, "classification")
    data = parse(raw(frame.to_csv(index=False)), params(target="churn"))
    types = {f.name: f.type for f in data.features}
    assert types == {"age": "numeric", "income": "numeric", "city": "categorical", "plan": "categorical"}
    assert data.frame["age"].isna().any() and data.frame["city"].isna().any()
    assert data.classes == ["no", "yes"]


def test_task_inference():
    numeric_target = "x,y\n" + "\n".join(f"{i},{i * 1.5 + 0.25}" for i in range(40))
    assert parse(raw(numeric_target), params(target="y")).task == "regression"
    few_integers = "x,y\n" + "\n".join(f"{i},{i % 3}" for i in range(40))
    assert parse(raw(few_integers), params(target="y")).task == "classification"
    assert parse(raw(few_integers), params(target="y", task="regression")).task == "regression"


@pytest.mark.parametrize(
    ("text", "fields", "message"),
    [
        ("a,b\n1,x\n2,y\n", {"target": "label"}, "target column 'label' not found (columns: a, b)"),
        ("", {"target": "y"}, "data.csv: the file is empty"),
        ("a,y\n", {"target": "y"}, "no data rows"),
        ("a,y\n1,x\n2,x\n3,x\n", {"target": "y"}, "has one class only ('x')"),
        ("a,y\n1,x\n2,x\n3,z\n", {"target": "y"}, "class 'z' of target 'y' has a single row"),
        ("a,y\n1,x\n2,\n3,z\n", {"target": "y"}, "target 'y' is empty on line 3"),
        (
            "a,b,y\n1,2,x\n2,oops,x\n3,4,z\n5,6,z\n",
            {"target": "y"},
            "column 'b' is numeric but line 3 has 'oops'",
        ),
        ("a,y\n1,x\n2,x,extra\n", {"target": "y"}, "malformed CSV"),
        ("a,y\n1,1.5\nnope,2.5\n", {"target": "y", "numeric": ["a"]}, "column 'a' is numeric but line 3"),
        ("a,y\n1,x\n", {"target": "y", "drop": ["zz"]}, "data.drop: column 'zz' not found"),
        ("a,,y\n1,2,x\n", {"target": "y"}, "empty column name"),
        ("a,b,y\n1,,x\n2,,z\n", {"target": "y"}, "column 'b' has no values"),
        (
            "a,y\n1,x\n2,z\n",
            {"target": "y", "task": "regression"},
            "column 'y' is numeric but line 2 has 'x'",
        ),
    ],
)
def test_bad_data_is_refused_with_a_precise_message(text, fields, message):
    with pytest.raises(PipelineError) as caught:
        parse(raw(text), params(**fields))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_csv_source_needs_a_target_and_an_existing_file(tmp_path: Path):
    with pytest.raises(PipelineError, match=r"file '.*missing\.csv' not found"):
        load_source(DataParams(source=str(tmp_path / "missing.csv")))
    (tmp_path / "d.csv").write_text("a,y\n1,x\n")
    with pytest.raises(PipelineError, match=r"data\.target: name the target column"):
        parse(
            load_source(DataParams(source=str(tmp_path / "d.csv"))),
            DataParams(source=str(tmp_path / "d.csv")),
        )


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"candidates": {"lgbm": {}}}, "train.candidates: Value error, unknown candidate 'lgbm'"),
        ({"metric": "accuracyy"}, "train.metric: Value error, unknown metric 'accuracyy'"),
        ({"candidates": {}}, "list at least one candidate"),
        ({"cv_fold": 3}, "train.cv_fold: Extra inputs are not permitted"),
        # Per task, each name is checked against that task's candidates.
        (
            {"candidates": {"regression": {"lgbm": {}}}},
            "train.candidates.regression: Value error, unknown candidate 'lgbm' (known: catboost,",
        ),
        (
            {"candidates": {"classification": ["svc", "svr"]}},
            "train.candidates.classification: Value error, 'svr' does not do classification",
        ),
        (
            {"candidates": {"regression": {"logistic_regression": {}}}},
            "train.candidates.regression: Value error, 'logistic_regression' does not do regression",
        ),
        ({"candidates": {"regression": {}}}, "train.candidates.regression: Value error, list at least one"),
        ({"candidates": {"regression": {"ridge": 3}}}, "train.candidates.regression.ridge: Input should be"),
        (
            {"candidates": {"regression": {"ridge": {}}, "svc": {}}},
            "train.candidates: Value error, give either",
        ),
        ({"candidates": "all"}, "train.candidates: Value error, expected auto, name -> hyperparameters"),
        ({"champion": "knn"}, "train.champion: Value error, 'knn' is not one of train.candidates"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, train, message):
    path = write_params(tmp_path, train=train)
    with pytest.raises(PipelineError) as caught:
        Params.load(path)
    assert message in str(caught.value)


def test_candidates_may_be_a_plain_list(tmp_path: Path):
    path = write_params(tmp_path)
    text = path.read_text().split("  candidates:")[0] + "  candidates: [svc, knn]\n"
    path.write_text(text)
    assert Params.load(path).train.candidates == {"svc": {}, "knn": {}}
    # A flat list is task-agnostic: train checks it against the data's task.
    assert Params.load(path).train.candidates_for("regression") == {"svc": {}, "knn": {}}


def test_the_projects_params_list_candidates_per_task():
    train = Params.load(ROOT / "params.yaml").train
    # The classifiers (and so the default Iris run) are the ones it always had.
    assert train.candidates_for("classification") == {
        "logistic_regression": {"C": 1.0, "max_iter": 1000},
        "random_forest": {"n_estimators": 100},
        "svc": {"C": 1.0, "kernel": "rbf"},
        "decision_tree": {"max_depth": 5},
    }
    assert list(train.candidates_for("regression")) == [
        "ridge",
        "random_forest",
        "gradient_boosting",
        "decision_tree",
    ]
    assert train.candidates_key("regression") == "train.candidates.regression"


@pytest.mark.parametrize("candidates", ["auto", None, "omitted"])
def test_auto_or_no_candidates_means_the_built_in_lists(tmp_path: Path, candidates):
    train = {k: v for k, v in DEFAULT_PARAMS["train"].items() if k != "candidates"}
    if candidates != "omitted":
        train["candidates"] = candidates
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    loaded = Params.load(tmp_path / "params.yaml").train
    for task in ("classification", "regression"):
        assert loaded.candidates_for(task) == DEFAULT_CANDIDATES[task]


def test_per_task_lists_take_names_and_a_task_left_out_gets_the_built_in_list(tmp_path: Path):
    path = write_params(tmp_path, train={"candidates": {"regression": ["ridge", "knn"]}, "champion": "knn"})
    train = Params.load(path).train
    assert train.candidates_for("regression") == {"ridge": {}, "knn": {}}
    assert train.candidates_for("classification") == DEFAULT_CANDIDATES["classification"]
    # model.json keeps the params as read: they load again to the same thing.
    assert Params.model_validate(Params.load(path).model_dump(mode="json")) == Params.load(path)
