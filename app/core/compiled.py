"""A fitted numeric pipeline as plain numpy arrays: serving runs it without importing scikit-learn.

train builds pipelines for all-numeric data as median imputer -> standard scaler -> model. Their
arithmetic is small: fill the gaps, standardise, then a linear function, a walk down trees or an
RBF kernel, then a link (softmax, logistic, sigmoid calibration, none). This module reads those
arrays out of a fitted pipeline (`compile_pipeline`), evaluates them (`CompiledModel.__call__`),
and stores them as an .npz file that loads with `allow_pickle=False`: no code in it, unlike
model.joblib.

Why it exists: importing scikit-learn costs ~0.8-1.7 s on a small machine, most of a cold start,
and its per-step input checks cost more than the arithmetic on one row. The compiled form is only
ever used after it reproduced the pipeline's own output (to 1e-9) on probe rows: train checks it
against the pipeline before writing it, and the file carries those probe rows and answers so
serving checks it again after loading, without scikit-learn.

Nothing here imports scikit-learn: estimators are recognised by their class's module and name.

One known limit: an SVC with more than two classes counts one-vs-one votes, a step function. A row
whose pairwise decision value is within rounding (~1e-12) of zero can get the other vote here than
in libsvm; such a row lies on the boundary between two classes either way.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.core.artifacts import Feature

Link = Literal["identity", "softmax", "logistic", "calibrated"]
LINKS = ("identity", "softmax", "logistic", "calibrated")
TOLERANCE = 1e-9
# The most floats one step of a kernel or tree evaluation holds at once (~32 MB).
BLOCK_ELEMENTS = 1 << 22
FORMAT = 1
# sklearn's trees compare features cast to float32 with float64 thresholds: the same cast here.
_TREE_DTYPE = np.float32


class CompiledError(ValueError):
    """The arrays are not a model this module can run, or do not give their recorded answers."""


@dataclass(frozen=True, eq=False)
class CompiledModel:
    """Probabilities (classification) or values (regression) for float64 rows, NaN for a gap."""

    task: str
    link: Link
    arrays: dict[str, np.ndarray]
    # The order of the probability columns (the pipeline's classes_); empty for a regression.
    classes: tuple[str, ...] = ()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        a = self.arrays
        z = (np.where(np.isnan(x), a["fill"], x) - a["mean"]) / a["scale"]
        if "coef" in a:
            raw = z @ a["coef"] + a["intercept"]
        else:
            # Kernels and trees hold a (rows x support vectors) or (rows x trees x outputs) block:
            # a batch is cut so that block stays bounded whatever the model's size.
            kernel = "support" in a
            width = len(a["support"]) if kernel else len(a["roots"]) * a["leaf"].shape[1]
            step = max(1, BLOCK_ELEMENTS // max(width, 1))
            part = _svc_decision if kernel else _trees
            raw = np.concatenate([part(a, z[i : i + step]) for i in range(0, max(len(z), 1), step)])
        if self.task == "regression":
            return raw[:, 0]
        if self.link == "softmax":
            raw = np.exp(raw - raw.max(axis=1, keepdims=True))
            return raw / raw.sum(axis=1, keepdims=True)
        if self.link == "logistic":
            positive = _expit(raw[:, 0])
            return np.column_stack([1.0 - positive, positive])
        if self.link == "calibrated":
            return _sigmoid_calibrated(a, raw)
        return raw

    def to_bytes(self, probe: np.ndarray) -> bytes:
        """The .npz file: the arrays, the link, and `probe` with this model's answers on it."""
        spec = json.dumps(
            {"format": FORMAT, "task": self.task, "link": self.link, "classes": list(self.classes)}
        )
        buffer = io.BytesIO()
        np.savez(buffer, spec=np.array(spec), probe=probe, expected=self(probe), **self.arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> CompiledModel:
        """Load and self-check an .npz written by to_bytes; CompiledError if it is not one."""
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            spec = json.loads(str(arrays.pop("spec")))
            probe, expected = arrays.pop("probe"), arrays.pop("expected")
            if spec.get("format") != FORMAT:
                raise CompiledError(f"format {spec.get('format')!r}, this version reads {FORMAT}")
            if spec.get("task") not in ("classification", "regression") or spec.get("link") not in LINKS:
                raise CompiledError(f"unknown task or link in {spec}")
            if spec["task"] == "classification" and not spec.get("classes"):
                raise CompiledError("no class order recorded")
            model = cls(spec["task"], spec["link"], arrays, tuple(map(str, spec.get("classes", []))))
            ours = model(probe)
        except CompiledError:
            raise
        except Exception as exc:  # a truncated file, a missing array, shapes that do not fit
            raise CompiledError(f"not a compiled model: {type(exc).__name__}: {exc}") from None
        if ours.shape != expected.shape or not np.allclose(ours, expected, rtol=0, atol=TOLERANCE):
            raise CompiledError("its answers on the recorded probe rows differ from the recorded ones")
        return model


def _expit(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(large) -> inf -> 0.0, as scipy's expit gives
        return 1.0 / (1.0 + np.exp(-z))


def _trees(a: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """Every row down every tree at once, one level per step, until all rest on leaves (which
    point to themselves). Flat indices: one gather per array and step, no 2-D fancy indexing."""
    n_rows, n_features = z.shape
    x32 = z.astype(_TREE_DTYPE).ravel()
    row_start = (np.arange(n_rows) * n_features)[:, np.newaxis]
    node = np.broadcast_to(a["roots"], (n_rows, len(a["roots"])))
    children, feature, threshold = a["children"], a["feature"], a["threshold"]
    for _ in range(int(a["depth"])):
        go_right = x32[row_start + feature[node]] > threshold[node]
        step = children[2 * node + go_right]
        if np.array_equal(step, node):
            break
        node = step
    return a["bias"] + a["weight"] * a["leaf"][node].sum(axis=1)


def _svc_decision(a: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """An RBF SVC's decision_function: libsvm's one-vs-one values as one product with the kernel
    (each pair's weights on the support vectors in one column), then sklearn's one-vs-rest votes
    with confidences for more than two classes, or the single value, sign flipped, for two."""
    distances = (z * z).sum(axis=1)[:, np.newaxis] + a["support_norms"] - 2.0 * (z @ a["support"].T)
    pairwise = np.exp(-a["gamma"] * np.maximum(distances, 0.0)) @ a["pair_weights"] + a["pair_intercept"]
    if pairwise.shape[1] == 1:
        return -pairwise
    confidences = (-pairwise) @ a["pair_sign"]  # +1 on a pair's second class, -1 on its first
    votes = (pairwise >= 0) @ a["pair_first"] + (pairwise < 0) @ a["pair_second"]
    return votes + confidences / (3.0 * (np.abs(confidences) + 1.0))


def _sigmoid_calibrated(a: dict[str, np.ndarray], decision: np.ndarray) -> np.ndarray:
    """CalibratedClassifierCV's sigmoid method: one sigmoid per class, then normalised."""
    proba = _expit(-(a["calibration_a"] * decision + a["calibration_b"]))
    if proba.shape[1] == 1:
        proba = np.column_stack([1.0 - proba[:, 0], proba[:, 0]])
    else:
        total = proba.sum(axis=1, keepdims=True)
        uniform = np.full_like(proba, 1.0 / proba.shape[1])
        proba = np.divide(proba, total, out=uniform, where=total != 0)
    proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
    return proba


# --- reading the arrays out of a fitted pipeline ------------------------------------------------


def _is(obj: object, module: str, name: str) -> bool:
    """isinstance without importing: unpickling the model already imported what it is made of."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(obj, cls)


def _flatten(trees: list[tuple[Any, np.ndarray]], width: int) -> dict[str, np.ndarray]:
    """sklearn `tree_` objects, each with its `width` outputs per node, as one set of node arrays
    (indices offset per tree)."""
    feature, threshold, children, leaf, roots = [], [], [], [], []
    offset, depth = 0, 0
    for tree, values in trees:
        count = tree.node_count
        index = np.arange(offset, offset + count)
        is_leaf = tree.children_left == -1
        roots.append(offset)
        feature.append(np.where(is_leaf, 0, tree.feature))
        threshold.append(np.where(is_leaf, np.inf, tree.threshold))
        # Left then right child of each node; NaN > threshold is False, as sklearn sends it left.
        left = np.where(is_leaf, index, tree.children_left + offset)
        right = np.where(is_leaf, index, tree.children_right + offset)
        children.append(np.column_stack([left, right]).ravel())
        leaf.append(values.reshape(count, width))
        offset += count
        depth = max(depth, int(tree.max_depth))
    return {
        "feature": np.concatenate(feature).astype(np.intp),
        "threshold": np.concatenate(threshold).astype(np.float64),
        "children": np.concatenate(children).astype(np.intp),
        "leaf": np.concatenate(leaf).astype(np.float64),
        "roots": np.array(roots, dtype=np.intp),
        "depth": np.array(depth),
    }


def _class_shares(tree: Any, n_classes: int) -> np.ndarray:
    """A classification tree's leaf values as probabilities, as its predict_proba normalises them."""
    values = tree.value[:, 0, :n_classes].astype(np.float64)
    total = values.sum(axis=1, keepdims=True)
    total[total == 0.0] = 1.0
    return values / total


def _model_arrays(model: Any, task: str) -> tuple[dict[str, np.ndarray], Link] | None:
    linear = ("LogisticRegression", "LinearRegression", "Ridge")
    if any(_is(model, "sklearn.linear_model", name) for name in linear):
        coef, intercept = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
        link: Link = "identity"
        if task == "classification":
            link = "logistic" if coef.shape[0] == 1 else "softmax"
        return {"coef": coef.T.astype(np.float64), "intercept": intercept.astype(np.float64)}, link

    forest = "RandomForestClassifier" if task == "classification" else "RandomForestRegressor"
    single = "DecisionTreeClassifier" if task == "classification" else "DecisionTreeRegressor"
    if _is(model, "sklearn.ensemble", forest) or _is(model, "sklearn.tree", single):
        if getattr(model, "n_outputs_", 1) != 1:
            return None
        estimators = list(getattr(model, "estimators_", [model]))
        width = int(model.n_classes_) if task == "classification" else 1
        trees = [
            (e.tree_, _class_shares(e.tree_, width) if task == "classification" else e.tree_.value[:, 0, :1])
            for e in estimators
        ]
        arrays = _flatten(trees, width)
        arrays |= {"bias": np.zeros(width), "weight": np.array(1.0 / len(estimators))}
        return arrays, "identity"

    if task == "classification" and _is(model, "sklearn.calibration", "CalibratedClassifierCV"):
        return _calibrated_svc_arrays(model)

    boosting = "GradientBoostingClassifier" if task == "classification" else "GradientBoostingRegressor"
    if _is(model, "sklearn.ensemble", boosting):
        return _boosting_arrays(model, task)
    return None


def _boosting_arrays(model: Any, task: str) -> tuple[dict[str, np.ndarray], Link] | None:
    """raw = init + learning_rate * sum of the stage trees, each stage one tree per raw column."""
    stages = model.estimators_  # shape (n_stages, width)
    width = stages.shape[1]
    init = model.init_
    if not (
        init == "zero"
        or _is(init, "sklearn.dummy", "DummyClassifier")
        or _is(init, "sklearn.dummy", "DummyRegressor")
    ):
        return None  # an init estimator whose raw prediction depends on the row
    bias = np.asarray(model._raw_predict_init(np.zeros((1, model.n_features_in_))), dtype=np.float64)[0]
    trees = []
    for stage in stages:
        for column, estimator in enumerate(stage):
            values = np.zeros((estimator.tree_.node_count, width))
            values[:, column] = estimator.tree_.value[:, 0, 0]
            trees.append((estimator.tree_, values))
    arrays = _flatten(trees, width) | {"bias": bias, "weight": np.array(float(model.learning_rate))}
    if task == "regression":
        return arrays, "identity"
    return arrays, "logistic" if width == 1 else "softmax"


def _calibrated_svc_arrays(model: Any) -> tuple[dict[str, np.ndarray], Link] | None:
    """CalibratedClassifierCV(SVC(kernel="rbf"), ensemble=False) with sigmoid calibration."""
    if model.method != "sigmoid" or len(model.calibrated_classifiers_) != 1:
        return None
    calibrated = model.calibrated_classifiers_[0]
    svc = calibrated.estimator
    if not _is(svc, "sklearn.svm", "SVC") or svc.kernel != "rbf" or svc.break_ties:
        return None
    n_classes = len(svc.classes_)
    if n_classes > 2 and svc.decision_function_shape != "ovr":
        return None
    # libsvm's own (unflipped) coefficients: support vectors grouped by class, one row per other class.
    dual, intercept = np.asarray(svc._dual_coef_), np.asarray(svc._intercept_, dtype=np.float64)
    bounds = np.concatenate([[0], np.cumsum(svc.n_support_)])
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    weights = np.zeros((dual.shape[1], len(pairs)))
    first, second = np.zeros((len(pairs), n_classes)), np.zeros((len(pairs), n_classes))
    for p, (i, j) in enumerate(pairs):
        weights[bounds[i] : bounds[i + 1], p] = dual[j - 1, bounds[i] : bounds[i + 1]]
        weights[bounds[j] : bounds[j + 1], p] = dual[i, bounds[j] : bounds[j + 1]]
        first[p, i] = second[p, j] = 1.0
    support = np.asarray(svc.support_vectors_, dtype=np.float64)
    arrays = {
        "support": support,
        "support_norms": (support * support).sum(axis=1),
        "gamma": np.array(float(svc._gamma)),
        "pair_weights": weights,
        "pair_intercept": intercept,
        "pair_first": first,
        "pair_second": second,
        "pair_sign": second - first,
        "calibration_a": np.array([c.a_ for c in calibrated.calibrators], dtype=np.float64),
        "calibration_b": np.array([c.b_ for c in calibrated.calibrators], dtype=np.float64),
    }
    return arrays, "calibrated"


def compile_pipeline(pipeline: Any, task: str) -> CompiledModel | None:
    """The pipeline's arrays, or None when it is not imputer -> scaler -> a model known here.

    Not yet checked against the pipeline: `verified` does that.
    """
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
    found = _model_arrays(model, task)
    if found is None:
        return None
    arrays, link = found
    classes = tuple(str(c) for c in getattr(pipeline, "classes_", ())) if task == "classification" else ()
    return CompiledModel(task, link, {"fill": fill, "mean": mean, "scale": scale} | arrays, classes)


def probe_rows(features: list[Feature], rows: int = 64, seed: int = 0) -> np.ndarray | None:
    """Rows inside and beyond the training range, with gaps: where a mismatch would hide.

    None when a feature is categorical: only all-numeric pipelines are compiled."""
    if any(f.type != "numeric" for f in features):
        return None
    low = np.array([f.min if f.min is not None else -1.0 for f in features])
    high = np.array([f.max if f.max is not None else 1.0 for f in features])
    rng = np.random.default_rng(seed)
    span = np.where(high > low, high - low, 1.0)
    probe = rng.uniform(low - span, high + span, size=(rows, len(low)))
    probe[rng.random(probe.shape) < 0.1] = np.nan
    return probe


def reference_function(pipeline: Any, task: str) -> Any:
    """What the compiled model must reproduce: predict_proba, or predict for a regression."""
    return pipeline.predict if task == "regression" else getattr(pipeline, "predict_proba", None)


def compile_verified(pipeline: Any, task: str, probe: np.ndarray | None) -> CompiledModel | None:
    """The pipeline's arrays, if they give its own answers on the probe rows; else None."""
    return verified(compile_pipeline(pipeline, task), reference_function(pipeline, task), probe)


def verified(
    compiled: CompiledModel | None, reference: Any, probe: np.ndarray | None
) -> CompiledModel | None:
    """`compiled` if it gives the reference's answers on the probe rows (to 1e-9), else None."""
    if compiled is None or reference is None or probe is None:
        return None
    try:
        ours, theirs = compiled(probe), np.asarray(reference(probe))
    except Exception:  # a shape we did not foresee: the pipeline serves instead
        return None
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=0, atol=TOLERANCE):
        return None
    return compiled
