"""The compiled form gives the pipeline's own answers, survives its file format, or is not used."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from app.core import compiled as compiled_module
from app.core.artifacts import Feature
from app.core.compiled import (
    CompiledError,
    CompiledModel,
    compile_pipeline,
    compile_verified,
    probe_rows,
    reference_function,
    verified,
)
from app.pipeline.candidates import CLASSIFIERS, REGRESSORS, build_pipeline

DATA = {
    "multiclass": ("classification", load_iris(return_X_y=True)),
    "binary": ("classification", load_breast_cancer(return_X_y=True)),
    "regression": ("regression", load_diabetes(return_X_y=True)),
}
# What compiled.py knows; the others serve through their scikit-learn pipeline.
COMPILED = {
    "logistic_regression",
    "random_forest",
    "decision_tree",
    "gradient_boosting",
    "svc",
    "linear_regression",
    "ridge",
}
CASES = [(kind, name) for kind in ("multiclass", "binary") for name in CLASSIFIERS] + [
    ("regression", name) for name in REGRESSORS
]


def features_of(x: np.ndarray) -> list[Feature]:
    return [
        Feature(name=f"f{i}", type="numeric", min=float(x[:, i].min()), max=float(x[:, i].max()))
        for i in range(x.shape[1])
    ]


def fitted(kind: str, name: str):
    task, (x, y) = DATA[kind]
    hyper = {"n_estimators": 10} if "forest" in name or "boosting" in name else {}
    return task, x, build_pipeline(name, task, hyper, features_of(x), seed=0).fit(x, y)


def compiled_and_checked(kind: str, name: str):
    task, x, pipeline = fitted(kind, name)
    reference = reference_function(pipeline, task)
    model = compile_verified(pipeline, task, probe_rows(features_of(x)))
    return model, reference, x


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_compiled_models_give_the_pipelines_answers(kind: str, name: str):
    model, reference, x = compiled_and_checked(kind, name)
    if name not in COMPILED:
        assert model is None
        return
    assert model is not None
    rows = probe_rows(features_of(x), rows=300, seed=7)
    for batch in (rows, rows[:1]):
        np.testing.assert_allclose(model(batch), reference(batch), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("kind", "name"), [("multiclass", "random_forest"), ("binary", "logistic_regression")]
)
def test_the_file_round_trips_and_checks_its_recorded_answers(kind: str, name: str):
    model, reference, x = compiled_and_checked(kind, name)
    probe = probe_rows(features_of(x))
    loaded = CompiledModel.from_bytes(model.to_bytes(probe))
    assert loaded.classes == model.classes and len(loaded.classes) == loaded(probe).shape[1]
    rows = probe_rows(features_of(x), rows=50, seed=3)
    np.testing.assert_allclose(loaded(rows), reference(rows), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["random_forest", "svc", "gradient_boosting"])
def test_big_batches_are_evaluated_in_blocks_with_the_same_answers(
    name: str, monkeypatch: pytest.MonkeyPatch
):
    model, _, x = compiled_and_checked("multiclass", name)
    rows = probe_rows(features_of(x), rows=101, seed=5)
    whole = model(rows)
    monkeypatch.setattr(compiled_module, "BLOCK_ELEMENTS", 1)  # one row per block
    # The same arithmetic; only BLAS may sum a product in another order.
    np.testing.assert_allclose(model(rows), whole, rtol=0, atol=1e-12)
    assert model(rows[:0]).shape == (0, 3)


def _rewrite(payload: bytes, **changes: np.ndarray) -> bytes:
    with np.load(io.BytesIO(payload)) as npz:
        arrays = {name: npz[name] for name in npz.files} | changes
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_arrays_that_no_longer_give_their_recorded_answers_are_refused():
    model, _, x = compiled_and_checked("multiclass", "logistic_regression")
    payload = model.to_bytes(probe_rows(features_of(x)))
    with np.load(io.BytesIO(payload)) as npz:
        shifted = npz["intercept"] + [0.5, 0.0, 0.0]  # softmax ignores a shift of every class
    with pytest.raises(CompiledError, match="differ from the recorded ones"):
        CompiledModel.from_bytes(_rewrite(payload, intercept=shifted))


def test_broken_files_and_pickled_objects_are_refused():
    model, _, x = compiled_and_checked("multiclass", "logistic_regression")
    payload = model.to_bytes(probe_rows(features_of(x)))
    with pytest.raises(CompiledError, match="not a compiled model"):
        CompiledModel.from_bytes(payload[: len(payload) // 2])
    # An object array would need pickle to load: never allowed.
    with pytest.raises(CompiledError, match="not a compiled model"):
        CompiledModel.from_bytes(_rewrite(payload, coef=np.array([{"x": 1}], dtype=object)))
    with pytest.raises(CompiledError, match="format"):
        CompiledModel.from_bytes(_rewrite(payload, spec=np.array('{"format": 99}')))
    unknown_link = '{"format": 1, "task": "classification", "link": "tanh", "classes": ["a"]}'
    with pytest.raises(CompiledError, match="unknown task or link"):
        CompiledModel.from_bytes(_rewrite(payload, spec=np.array(unknown_link)))
    no_classes = '{"format": 1, "task": "classification", "link": "softmax"}'
    with pytest.raises(CompiledError, match="no class order"):
        CompiledModel.from_bytes(_rewrite(payload, spec=np.array(no_classes)))


def test_pipelines_with_categories_are_not_compiled():
    features = [Feature(name="a", type="numeric"), Feature(name="b", type="categorical")]
    pipeline = build_pipeline("logistic_regression", "classification", {}, features, seed=0)
    x = np.array([[1.0, "x"], [2.0, "y"], [3.0, "x"], [4.0, "y"]], dtype=object)
    pipeline.fit(x, ["p", "q", "p", "q"])
    assert compile_pipeline(pipeline, "classification") is None
    assert probe_rows(features) is None


def test_a_compiled_model_that_disagrees_is_refused():
    model, reference, x = compiled_and_checked("multiclass", "logistic_regression")
    probe = probe_rows(features_of(x))
    assert verified(model, lambda rows: reference(rows)[:, ::-1], probe) is None
    assert verified(model, lambda rows: 1 / 0, probe) is None


def test_loading_and_running_a_compiled_model_needs_no_scikit_learn(tmp_path):
    model, _, x = compiled_and_checked("multiclass", "random_forest")
    (tmp_path / "model.npz").write_bytes(model.to_bytes(probe_rows(features_of(x))))
    script = (
        "import sys, numpy as np\n"
        "from app.core.compiled import CompiledModel\n"
        f"model = CompiledModel.from_bytes(open({str(tmp_path / 'model.npz')!r}, 'rb').read())\n"
        "print(model(np.array([[5.1, 3.5, 1.4, 0.2]])).argmax())\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'joblib', 'pandas') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["0", "[]"]
