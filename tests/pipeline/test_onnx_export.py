"""Every candidate converts to ONNX on numeric, mixed (categorical + gaps) and regression data, and
onnxruntime gives the pipeline's answers: to 1e-6, or a refusal where scikit-learn has no answer."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_diabetes, load_iris, load_wine

from app.adapters.onnx_model import PROBE_KEY, OnnxError, OnnxModel, disagreement, finite_rows
from app.core.artifacts import MISSING_CATEGORY, Feature
from app.core.loading import pipeline_answers
from app.pipeline.candidates import CLASSIFIERS, REGRESSORS, build_pipeline
from app.pipeline.onnx_export import export, probe_rows

Data = tuple[list[Feature], np.ndarray, np.ndarray, str]


def _numeric_features(x: np.ndarray, names: list[str]) -> list[Feature]:
    return [
        Feature(name=n, type="numeric", min=float(np.nanmin(x[:, i])), max=float(np.nanmax(x[:, i])))
        for i, n in enumerate(names)
    ]


@cache
def dataset(name: str) -> Data:
    if name == "iris":
        data = load_iris()
        classes = np.array(data.target_names)
        return (
            _numeric_features(data.data, list(data.feature_names)),
            data.data,
            classes[data.target],
            "classification",
        )
    if name == "diabetes":
        data = load_diabetes()
        return _numeric_features(data.data, list(data.feature_names)), data.data, data.target, "regression"
    # wine-like: the wine measurements, a categorical column, and gaps in both kinds of column;
    # classified by cultivar, or (wine-like-regression) the alcohol content regressed on the rest.
    data = load_wine()
    rng = np.random.default_rng(3)
    numbers = data.data[:, 1:6].copy()
    numbers[rng.random(numbers.shape) < 0.06] = np.nan
    region = rng.choice(["north", "south", "coast"], len(numbers)).astype(object)
    region[rng.random(len(region)) < 0.08] = MISSING_CATEGORY
    x = np.column_stack([numbers.astype(object), region])
    features = [
        *(
            Feature(
                name=f"m{i}",
                type="numeric",
                min=float(np.nanmin(numbers[:, i])),
                max=float(np.nanmax(numbers[:, i])),
                missing_fraction=0.06,
            )
            for i in range(numbers.shape[1])
        ),
        Feature(
            name="region", type="categorical", categories=["coast", "north", "south"], missing_fraction=0.08
        ),
    ]
    if name == "wine-like-regression":
        return features, x, data.data[:, 0], "regression"
    return features, x, np.array(["cultivar_" + str(t) for t in data.target]), "classification"


@cache
def fitted(data: str, candidate: str) -> tuple[object, bytes]:
    features, x, y, task = dataset(data)
    pipeline = build_pipeline(candidate, task, {}, features, seed=0)
    pipeline.fit(x, y)
    return pipeline, export(pipeline, task, features)  # type: ignore[arg-type]


CASES = [
    *(("iris", name) for name in CLASSIFIERS),
    *(("wine-like", name) for name in CLASSIFIERS),
    *(("diabetes", name) for name in REGRESSORS),
    *(("wine-like-regression", name) for name in REGRESSORS),
]


@pytest.mark.parametrize(("data", "candidate"), CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_every_candidate_converts_and_matches_its_pipeline(data: str, candidate: str):
    features, x, _, task = dataset(data)
    pipeline, payload = fitted(data, candidate)
    model = OnnxModel.from_bytes(payload)  # re-checks the probe answers it carries
    # The training rows, and probe rows it did not see at export (other seed, more of them).
    rows = np.concatenate([x, probe_rows(features, seed=11, rows=500)])
    with np.errstate(all="ignore"):
        ours, theirs = model(rows), pipeline_answers(pipeline, task)(rows)  # type: ignore[arg-type]
    assert disagreement(ours, theirs, task) is None
    # Training rows are all answered.
    assert finite_rows(ours[: len(x)], task).all()


def test_a_file_whose_recorded_answers_do_not_hold_is_refused():
    # A valid ONNX file, the same graph, but one recorded answer moved by 1e-3: the load-time check
    # must catch it (a byte-level edit would only test that a corrupt file fails to parse).
    _, payload = fitted("iris", "logistic_regression")
    assert OnnxModel.from_bytes(payload) is not None
    graph = onnx.load_from_string(payload)
    entry = next(p for p in graph.metadata_props if p.key == PROBE_KEY)
    probe = json.loads(entry.value)
    probe["expected"][0][0] += 1e-3
    entry.value = json.dumps(probe)
    with pytest.raises(OnnxError, match="differ from the recorded ones"):
        OnnxModel.from_bytes(graph.SerializeToString())


def _finite_floats() -> st.SearchStrategy[float]:
    # Anywhere in the float64 range, with the edges and subnormals hypothesis likes to try.
    return st.floats(allow_nan=False, allow_infinity=False)


PROPERTY_CASES = [("iris", name) for name in CLASSIFIERS] + [("diabetes", name) for name in REGRESSORS]


@pytest.mark.parametrize(("data", "candidate"), PROPERTY_CASES, ids=[f"{d}-{c}" for d, c in PROPERTY_CASES])
def test_any_finite_floats_give_the_pipelines_answer_or_a_refusal(data: str, candidate: str):
    features, _, _, task = dataset(data)
    pipeline, payload = fitted(data, candidate)
    model = OnnxModel.from_bytes(payload)
    answer = pipeline_answers(pipeline, task)  # type: ignore[arg-type]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.lists(_finite_floats(), min_size=len(features), max_size=len(features)), min_size=1, max_size=4
        )
    )
    def check(rows: list[list[float]]) -> None:
        matrix = np.array(rows, dtype=np.float64)
        with np.errstate(all="ignore"):
            ours, theirs = model(matrix), answer(matrix)
        answered = finite_rows(ours, task)
        # What is answered is the pipeline's answer; the rest is refused (a 422 in the API).
        assert disagreement(ours[answered], theirs[answered], task) is None

    check()
