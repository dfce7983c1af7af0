"""`models import` end to end: a model trained elsewhere, imported by the command, served, and its
/predict answers compared with the original library's on held-out rows. Refusals publish nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator, TransformerMixin
from typer.testing import CliRunner

from app.adapters.model_store import ModelStore
from app.cli import cli
from app.core.artifacts import ModelMetadata
from app.core.config import Settings, get_settings
from app.main import create_app
from tests.api.test_request_path_imports import SCRIPT
from tests.support.tokens import ADMIN, SECRET, bearer, get_token

pytestmark = pytest.mark.filterwarnings("ignore")

ROWS = 600
HELD_OUT = 80


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with its own database, model store and MLflow store; no model trained here."""
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "DATABASE_URL": f"sqlite:///{tmp_path}/predictor.db",
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_STORE_URL": str(tmp_path / "store"),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SECRET_KEY": SECRET,
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def run_import(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", "import", *args])
    return result.exit_code, result.output


def stored_versions(project: Path) -> list[str]:
    store = project / "store"
    return sorted(p.name for p in store.iterdir() if p.is_dir()) if store.exists() else []


def served_answers(project: Path, rows: pd.DataFrame) -> list[dict]:
    """POST /predict to the app as every replica serves it: the version the serving pointer names."""
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{project}/predictor.db",
        model_dir=project / "models",
        model_store_url=str(project / "store"),
        model_cache_dir=project / "cache",
        secret_key=SECRET,
        admin_username=ADMIN[0],
        admin_password=ADMIN[1],
    )
    instances = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in rows.to_dict("records")]
    with TestClient(create_app(settings)) as client:
        headers = bearer(get_token(client, *ADMIN))
        response = client.post("/predict", json={"instances": instances}, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]


def assert_same_classes(served: list[dict], classes: list[str], expected: np.ndarray) -> None:
    labels = [p["label"] for p in served]
    assert labels == [classes[i] for i in expected.argmax(axis=1)]
    found = np.array([[p["probabilities"][c] for c in classes] for p in served])
    # The API rounds probabilities for JSON (app.serving.json_answer): compare at its precision.
    assert np.abs(found - expected).max() <= 1e-5


def shop_data(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.uniform(18, 80, ROWS).round(1),
            "income": rng.lognormal(10, 0.5, ROWS).round(0),
            "city": rng.choice(["paris", "lyon", "nice"], ROWS),
        }
    )
    score = frame.age / 80 + (frame.city == "lyon") * 0.6 + rng.normal(0, 0.3, ROWS)
    frame["bought"] = np.where(score > 0.9, "yes", "no")
    return frame


def prices(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(ROWS, 4)), columns=["a", "b", "c", "d"])
    frame["price"] = frame.a * 3 - frame.b + np.sin(frame.c) + rng.normal(0, 0.1, ROWS)
    return frame


def test_a_lightgbm_classifier_with_a_category_from_the_mlflow_registry_by_alias(project: Path) -> None:
    import lightgbm
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    data = shop_data()
    train, held_out = data.iloc[:-HELD_OUT], data.iloc[-HELD_OUT:]
    features = train[["age", "income", "city"]].astype({"city": "category"})
    model = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(features, train.bought)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("elsewhere")
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            model,
            name="model",
            registered_model_name="shop",
            input_example=features.head(5),
            signature=infer_signature(features, model.predict(features)),
        )
    MlflowClient().set_registered_model_alias("shop", "prod", info.registered_model_version)
    train.to_csv(project / "sample.csv", index=False)

    code, output = run_import("models:/shop@prod", "--sample", "sample.csv", "--target", "bought", "--serve")

    assert code == 0, output
    assert "categorical: city" in output and "labels identical" in output and "serving " in output
    version = stored_versions(project)[0]
    metadata = ModelMetadata.read(project / "store" / version)
    assert metadata.source is not None and metadata.source.flavor == "lightgbm"
    assert (metadata.source.registered_model, metadata.source.registered_version) == ("shop", "1")
    assert metadata.parity is not None and metadata.parity.rows_from == "sample"
    assert metadata.sha256 is None and metadata.registered_model == "predictor"
    expected = model.predict_proba(held_out[["age", "income", "city"]].astype({"city": features.city.dtype}))
    served = served_answers(project, held_out[["age", "income", "city"]])
    assert_same_classes(served, ["no", "yes"], expected)


def test_an_xgboost_regressor_from_json(project: Path) -> None:
    import xgboost

    data = prices()
    train, held_out = data.iloc[:-HELD_OUT], data.iloc[-HELD_OUT:]
    model = xgboost.XGBRegressor(n_estimators=30).fit(train[["a", "b", "c", "d"]], train.price)
    model.save_model(project / "prices.json")
    train.to_csv(project / "sample.csv", index=False)

    code, output = run_import("prices.json", "--sample", "sample.csv", "--target", "price", "--serve")

    assert code == 0, output
    served = served_answers(project, held_out[["a", "b", "c", "d"]])
    expected = model.predict(held_out[["a", "b", "c", "d"]])
    assert np.abs(np.array([p["value"] for p in served]) - expected).max() <= 1e-5


def test_a_catboost_classifier_from_cbm_without_a_sample(project: Path) -> None:
    import catboost

    data = prices()
    target = np.where(data.price > 0, "up", "down")
    train, held_out = data.iloc[:-HELD_OUT, :4], data.iloc[-HELD_OUT:, :4]
    model = catboost.CatBoostClassifier(iterations=30, verbose=0, thread_count=1)
    model.fit(train, target[:-HELD_OUT])
    model.save_model(str(project / "direction.cbm"))

    code, output = run_import("direction.cbm", "--serve")

    assert code == 0, output
    assert "500 schema rows" in output  # no sample: rows drawn from the schema, and said so
    assert "drift: off" in output
    served = served_answers(project, held_out)
    assert_same_classes(served, ["down", "up"], model.predict_proba(held_out))


def _shop_pipeline(train: pd.DataFrame, extra: list | None = None):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prepare = ColumnTransformer(
        [
            ("numbers", Pipeline([*(extra or []), ("scale", StandardScaler())]), ["age", "income"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]
    )
    pipeline = Pipeline([("prepare", prepare), ("model", HistGradientBoostingClassifier(max_iter=30))])
    return pipeline.fit(train[["age", "income", "city"]], train.bought)


def test_a_scikit_learn_pipeline_with_one_hot_scaling_and_histogram_boosting(project: Path) -> None:
    import joblib

    data = shop_data(seed=2)
    train, held_out = data.iloc[:-HELD_OUT], data.iloc[-HELD_OUT:]
    pipeline = _shop_pipeline(train)
    joblib.dump(pipeline, project / "shop.joblib")
    train.to_csv(project / "sample.csv", index=False)

    code, output = run_import("shop.joblib", "--sample", "sample.csv", "--target", "bought", "--serve")

    assert code == 0, output
    served = served_answers(project, held_out[["age", "income", "city"]])
    assert_same_classes(served, ["no", "yes"], pipeline.predict_proba(held_out[["age", "income", "city"]]))


def test_an_onnx_file_with_its_schema_from_the_sample(project: Path) -> None:
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    data = prices()
    target = np.where(data.price > 0, "up", "down")
    x = data[["a", "b", "c", "d"]].to_numpy(dtype=np.float32)
    network = MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(x, target)
    graph = convert_sklearn(network, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=15)
    (project / "network.onnx").write_bytes(graph.SerializeToString())
    sample = data[["a", "b", "c", "d"]].assign(direction=target).iloc[:-HELD_OUT]
    sample.to_csv(project / "sample.csv", index=False)

    code, output = run_import("network.onnx")
    assert code == 1 and "does not name its input columns: pass --sample" in output
    assert stored_versions(project) == []

    code, output = run_import("network.onnx", "--sample", "sample.csv", "--target", "direction", "--serve")

    assert code == 0, output
    held_out = data[["a", "b", "c", "d"]].iloc[-HELD_OUT:]
    session = onnxruntime.InferenceSession(graph.SerializeToString())
    zipped = session.run(None, {"input": held_out.to_numpy(dtype=np.float32)})[1]
    expected = np.array([[row["down"], row["up"]] for row in zipped])
    assert_same_classes(served_answers(project, held_out), ["down", "up"], expected)


def test_refusals_name_the_step_and_publish_nothing(project: Path) -> None:
    import joblib
    import lightgbm

    data = shop_data(seed=3)
    data.to_csv(project / "sample.csv", index=False)
    custom = _shop_pipeline(data, extra=[("clip", _Clip())])
    joblib.dump(custom, project / "custom.joblib")
    code, output = run_import("custom.joblib", "--sample", "sample.csv", "--target", "bought")
    assert code == 1 and "refused at compile" in output
    assert "'prepare > numbers > clip' (_Clip) has no ONNX converter" in output

    features = data[["age", "income", "city"]].astype({"city": "category"})
    booster = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(features, data.bought).booster_
    booster.save_model(project / "shop.txt")
    code, output = run_import(
        "shop.txt", "--sample", "sample.csv", "--target", "bought", "--tolerance", "1e-12"
    )
    assert code == 1 and "refused at parity" in output
    assert "rows differ" in output and "the largest difference is" in output and "on row" in output

    (project / "notes.txt").write_text("not a model\n")
    code, output = run_import("notes.txt")
    assert code == 1 and "refused at source" in output

    assert stored_versions(project) == []


class _Clip(TransformerMixin, BaseEstimator):
    """A transformer of the user's own: no converter knows it."""

    def fit(self, x: object, y: object = None) -> _Clip:
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, -1e9, 1e9)


def test_an_imported_version_serves_without_any_model_library(project: Path) -> None:
    """The request-path guard of tests/api/test_request_path_imports, on imported versions: no
    scikit-learn, LightGBM, XGBoost, CatBoost, pandas or MLflow may even be importable."""
    import lightgbm
    import xgboost

    data = shop_data(seed=4)
    features = data[["age", "income", "city"]].astype({"city": "category"})
    lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(features, data.bought).booster_.save_model(
        project / "shop.txt"
    )
    numbers = prices(seed=5)
    xgboost.XGBRegressor(n_estimators=10).fit(numbers[["a", "b", "c", "d"]], numbers.price).save_model(
        project / "prices.json"
    )
    data.to_csv(project / "shop.csv", index=False)
    cases = []
    for source, sample, target, row in [
        ("shop.txt", "shop.csv", "bought", {"age": 40.0, "income": 20000.0, "city": "lyon"}),
        ("prices.json", None, None, {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.0}),
    ]:
        args = [source, *(["--sample", sample, "--target", target] if sample else [])]
        code, output = run_import(*args)
        assert code == 0, output
        version = next(line.split()[1] for line in output.splitlines() if line.startswith("imported "))
        folder = ModelStore.from_url(str(project / "store"), project / "cache").fetch(version)
        cases.append((str(folder), row))
    guarded = ["sklearn", "scipy", "joblib", "pandas", "mlflow", "lightgbm", "xgboost", "catboost"]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            "block",
            f"sqlite:///{project}/users.db",
            json.dumps(cases),
            ",".join(guarded),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["statuses"] == [200, 200] * len(cases)
    assert outcome["served_by"] == ["onnx"] * len(cases)
    assert outcome["loaded"] == []


@pytest.mark.parametrize("booster", ["lightgbm", "xgboost", "catboost"])
def test_boosters_inside_scikit_learn_pipelines(project: Path, booster: str) -> None:
    """Imputer, scaler and an encoder in a ColumnTransformer, then the booster: one graph, parity held."""
    import catboost
    import joblib
    import lightgbm
    import xgboost
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    data = shop_data(seed=6).assign(bought=lambda f: (f.bought == "yes").astype(int))
    encoder = OrdinalEncoder() if booster == "xgboost" else OneHotEncoder(handle_unknown="ignore")
    models = {
        "lightgbm": lambda: lightgbm.LGBMClassifier(n_estimators=20, verbose=-1),
        "xgboost": lambda: xgboost.XGBClassifier(n_estimators=20),
        "catboost": lambda: catboost.CatBoostClassifier(iterations=20, verbose=0, allow_writing_files=False),
    }
    numbers = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    prepare = ColumnTransformer([("numbers", numbers, ["age", "income"]), ("city", encoder, ["city"])])
    pipeline = Pipeline([("prepare", prepare), ("model", models[booster]())])
    pipeline.fit(data[["age", "income", "city"]], data.bought)
    joblib.dump(pipeline, project / "pipeline.joblib")
    data.to_csv(project / "sample.csv", index=False)

    code, output = run_import("pipeline.joblib", "--sample", "sample.csv", "--target", "bought")

    assert code == 0, output
    assert f"parity: {ROWS} sample rows, labels identical" in output
    assert len(stored_versions(project)) == 1
