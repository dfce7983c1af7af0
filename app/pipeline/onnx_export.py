"""A fitted candidate pipeline as an ONNX model: what serving runs, with no pickle and no scikit-learn.

    export(pipeline, task, features) -> bytes     # raises ExportError saying why

skl2onnx converts the whole pipeline (imputation, scaling, one-hot encoding and the model) into one
graph. Its defaults are tuned for float32; the pipelines here compute in float64, and a few stock
converters do not reproduce them in double precision, so this module replaces them while it converts:

- SimpleImputer on numbers: onnxruntime's Imputer op has a float32 kernel only; IsNaN + Where instead.
- Trees, forests and gradient boosting: scikit-learn casts the standardised rows to float32, then
  compares them with float64 thresholds and sums leaf values in float64. The stock converters fed
  float64 keep float32 thresholds, which move branches (a random forest's probabilities moved by up
  to 0.04 on Iris), and sum in float32 (a 100-tree forest drifted by 1.1e-6, gradient-boosting
  regression by 3e-6). Here the rows are rounded to float32 first, as scikit-learn does, and the
  trees are written at ai.onnx.ml opset 3, with float64 thresholds and leaf values.
- SVR: onnxruntime has no float64 SVMRegressor: the RBF kernel is written in plain ONNX ops.

Categorical columns are strings, with MISSING_CATEGORY for a gap (ONNX string tensors hold no NaN).
Every column is one graph input when some are categorical; all-numeric data is one float64 matrix.

The file is written only if onnxruntime reproduces the pipeline on probe rows (inside and beyond the
training range, with gaps, unseen categories and extreme finite values) to TOLERANCE. The probe rows
and the pipeline's answers travel inside the file (metadata `predictor.probe`): serving checks them
again after loading (app/serving/onnx_model.py), without scikit-learn.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import numpy as np
from sklearn.pipeline import Pipeline

from app.adapters.onnx_model import (
    NUMERIC_INPUT,
    PROBE_KEY,
    SPEC_KEY,
    OnnxError,
    OnnxModel,
    OnnxSpec,
    Standardization,
    column_input,
    disagreement,
    encode_rows,
)
from app.core.artifacts import MISSING_CATEGORY, Feature, Task
from app.core.loading import pipeline_answers

# Opsets onnxruntime 1.31 runs and skl2onnx 1.20 writes; ai.onnx.ml 3 has float64 tree attributes.
OPSET = {"": 18, "ai.onnx.ml": 3}
PROBE_ROWS = 96
# Finite values at the edges of float64, which overflow any arithmetic that is not careful.
EXTREMES = (1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -5e-324, 1e300, -1e300, 1e12, 0.0)


class ExportError(Exception):
    """The pipeline cannot be served as ONNX; the message says why (train prints it)."""


def to_onnx(
    pipeline: Pipeline,
    task: Task,
    features: list[Feature],
    initial_types: list[tuple[str, Any]] | None = None,
) -> Any:
    """The pipeline as an ONNX ModelProto in this service's layout (inputs as `_initial_types`,
    probabilities or values out), unchecked; ExportError when no converter takes it. Training's
    `export` and `models import` (app/importing) both convert through here; an imported pipeline
    that selects columns by name passes inputs named by them (`initial_types`)."""
    _register_converters()
    from skl2onnx import convert_sklearn

    model_options: dict[str, Any] = {"zipmap": False} if task == "classification" else {}
    if hasattr(pipeline.steps[-1][1], "n_neighbors"):
        # onnxruntime's CDist op instead of a Scan loop over the training rows: ~60x faster per call
        # (595 -> 10 us for one row on diabetes), same answers.
        model_options["optim"] = "cdist"
    options = {id(pipeline.steps[-1][1]): model_options} if model_options else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_sklearn(
                pipeline,
                initial_types=initial_types or _initial_types(features),
                options=options,
                target_opset=OPSET,
            )
    except Exception as exc:  # skl2onnx raises many kinds: each is "not convertible"
        raise ExportError(
            f"skl2onnx cannot convert it: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
    return model


def export(pipeline: Pipeline, task: Task, features: list[Feature], seed: int = 0) -> bytes:
    """The pipeline as an ONNX file, verified against the pipeline on probe rows."""
    model = to_onnx(pipeline, task, features)
    classes = [str(c) for c in getattr(pipeline, "classes_", [])] if task == "classification" else []
    probe = probe_rows(features, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pipeline_answers(pipeline, task)(probe)
    spec = OnnxSpec(
        task=task,
        classes=classes,
        features=[f.name for f in features],
        numeric=_all_numeric(features),
        standardization=standardization(pipeline, features),
    )
    _set_metadata(model, SPEC_KEY, spec.model_dump_json())
    _set_metadata(model, PROBE_KEY, json.dumps(encode_rows(probe, expected)))
    payload = model.SerializeToString()
    try:
        with np.errstate(all="ignore"):
            ours = OnnxModel.from_bytes(payload, check=False)(probe)
    except (OnnxError, RuntimeError) as exc:  # onnxruntime's own errors are RuntimeErrors
        raise ExportError(f"onnxruntime cannot run it: {exc}".splitlines()[0]) from None
    problem = disagreement(ours, expected, task)
    if problem is not None:
        raise ExportError(f"its answers differ from the pipeline's on probe rows: {problem}")
    return payload


def standardization(pipeline: Pipeline, features: list[Feature]) -> Standardization | None:
    """The pipeline's StandardScaler and the raw columns it scales (both shapes build_pipeline makes)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    numeric = [i for i, f in enumerate(features) if f.type == "numeric"]
    found: list[tuple[Any, list[int]]] = []
    for _, step in pipeline.steps[:-1]:
        if isinstance(step, StandardScaler):
            found.append((step, numeric))
        elif isinstance(step, ColumnTransformer):
            for _, transformer, columns in step.transformers_:
                steps = getattr(transformer, "steps", [])
                found += [(s, [int(c) for c in columns]) for _, s in steps if isinstance(s, StandardScaler)]
    if len(found) != 1:
        return None
    scaler, columns = found[0]
    model = pipeline.steps[-1][1]
    limit: Literal["float64", "float32", "distances"] = "float64"
    if hasattr(model, "estimators_") or hasattr(model, "tree_"):
        limit = "float32"  # scikit-learn's trees compute in float32
    elif hasattr(model, "n_neighbors"):
        limit = "distances"
    return Standardization(
        columns=columns,
        mean=[float(v) for v in (scaler.mean_ if scaler.with_mean else np.zeros(len(columns)))],
        scale=[float(v) for v in (scaler.scale_ if scaler.with_std else np.ones(len(columns)))],
        limit=limit,
    )


def probe_rows(features: list[Feature], seed: int = 0, rows: int = PROBE_ROWS) -> np.ndarray:
    """Rows where a mismatch would hide: inside and beyond the training range, gaps, unseen
    categories, and extreme finite floats."""
    rng = np.random.default_rng(seed)
    numeric = _all_numeric(features)
    probe = np.empty((rows, len(features)), dtype=np.float64 if numeric else object)
    for i, feature in enumerate(features):
        if feature.type == "numeric":
            low = feature.min if feature.min is not None else -1.0
            high = feature.max if feature.max is not None else 1.0
            span = high - low if high > low else 1.0
            column = rng.uniform(low - span, high + span, rows)
            extreme = rng.random(rows) < 0.08
            column[extreme] = rng.choice(EXTREMES, int(extreme.sum()))
            column[rng.random(rows) < 0.1] = np.nan
        else:
            known = list(feature.categories or [])
            column = rng.choice([*known, "never-seen-in-training"] if known else ["x"], rows).astype(object)
            column[rng.random(rows) < 0.1] = MISSING_CATEGORY
        probe[:, i] = column
    return probe


def _all_numeric(features: list[Feature]) -> bool:
    return all(f.type == "numeric" for f in features)


def _initial_types(features: list[Feature]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    if _all_numeric(features):
        return [(NUMERIC_INPUT, DoubleTensorType([None, len(features)]))]
    # One input per column, in feature order: skl2onnx maps the pipeline's column positions onto them.
    return [
        (column_input(i), DoubleTensorType([None, 1]) if f.type == "numeric" else StringTensorType([None, 1]))
        for i, f in enumerate(features)
    ]


def _set_metadata(model: Any, key: str, value: str) -> None:
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


# --- converters that keep float64 precision ----------------------------------------------------


class _Retyped:
    """An skl2onnx operator seen with other input and output variables (the stock converters only
    read names and types through these)."""

    def __init__(self, operator: Any, inputs: list[Any], outputs: list[Any]) -> None:
        self._operator, self.inputs, self.outputs = operator, inputs, outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._operator, name)

    @property
    def input_full_names(self) -> list[str]:
        return [v.full_name for v in self.inputs]

    @property
    def output_full_names(self) -> list[str]:
        return [v.full_name for v in self.outputs]


def _float32_trees(stock: Callable[..., None], op_type: str) -> Callable[..., None]:
    """Trees on a float64 input: rounded to float32 (and back) as scikit-learn's trees round it, then
    the stock converter at ai.onnx.ml opset 3 (float64 thresholds, chosen by skl2onnx so that x <= w
    exactly when float32(x) <= t, and float64 leaf values). onnxruntime answers those ops in float32:
    cast to the float64 outputs the graph declares."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from skl2onnx.proto import onnx_proto

    def convert(scope: Any, operator: Any, container: Any) -> None:
        source = operator.inputs[0]
        if not isinstance(source.type, DoubleTensorType):
            stock(scope, operator, container)
            return
        narrow = scope.declare_local_variable("x32", FloatTensorType(source.type.shape))
        _cast(scope, container, source.full_name, narrow.full_name, onnx_proto.TensorProto.FLOAT)
        twins = [
            scope.declare_local_variable(f"{o.raw_name}32", FloatTensorType())
            if isinstance(o.type, DoubleTensorType)
            else o
            for o in operator.outputs
        ]
        wide = scope.declare_local_variable("x32as64", DoubleTensorType(source.type.shape))
        _cast(scope, container, narrow.full_name, wide.full_name, onnx_proto.TensorProto.DOUBLE)
        stock(scope, _Retyped(operator, [wide], twins), container, op_type, "ai.onnx.ml", 3)
        for twin, output in zip(twins, operator.outputs, strict=True):
            if twin is not output:
                _cast(scope, container, twin.full_name, output.full_name, onnx_proto.TensorProto.DOUBLE)

    return convert


def _cast(scope: Any, container: Any, source: str, target: str, to: int) -> None:
    container.add_node("Cast", source, target, to=to, name=scope.get_unique_operator_name("Cast"))


def _float64_imputer(stock: Callable[..., None]) -> Callable[..., None]:
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.proto import onnx_proto

    def convert(scope: Any, operator: Any, container: Any) -> None:
        imputer = operator.raw_operator
        if not isinstance(operator.inputs[0].type, DoubleTensorType):
            stock(scope, operator, container)
            return
        if imputer.add_indicator or not np.isnan(imputer.missing_values):
            raise NotImplementedError("a numeric SimpleImputer with an indicator or a non-NaN marker")
        names = operator.input_full_names
        x = names[0]
        if len(names) > 1:
            x = scope.get_unique_variable_name("columns")
            container.add_node("Concat", names, x, axis=1, name=scope.get_unique_operator_name("Concat"))
        fill = scope.get_unique_variable_name("fill")
        statistics = np.asarray(imputer.statistics_, dtype=np.float64)
        container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE, [len(statistics)], statistics.tolist())
        gaps = scope.get_unique_variable_name("gaps")
        container.add_node("IsNaN", x, gaps, name=scope.get_unique_operator_name("IsNaN"))
        container.add_node(
            "Where",
            [gaps, fill, x],
            operator.outputs[0].full_name,
            name=scope.get_unique_operator_name("Where"),
        )

    return convert


class _TreeAttributes:
    """A converter's container that fixes what skl2onnx 1.20 writes for HistGradientBoosting:
    Python booleans among the missing-value directions (nodes_missing_value_tracks_true), which
    ONNX's integer attributes refuse, and, with `wide`, float64 thresholds and weights that it would
    write as float32 attributes: they go in ai.onnx.ml opset 3's `*_as_tensor` attributes instead."""

    WIDE = ("nodes_values", "base_values", "class_weights", "target_weights", "nodes_hitrates")

    def __init__(self, container: Any, wide: bool = False) -> None:
        self._container, self._wide = container, wide

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, *args: Any, **attributes: Any) -> Any:
        from onnx import numpy_helper

        fixed: dict[str, Any] = {}
        for key, value in attributes.items():
            if isinstance(value, list | tuple) and any(isinstance(v, bool | np.bool_) for v in value):
                value = [int(v) for v in value]
            if self._wide and key in self.WIDE and isinstance(value, np.ndarray):
                key, value = f"{key}_as_tensor", numpy_helper.from_array(value.astype(np.float64))
            fixed[key] = value
        return self._container.add_node(*args, **fixed)


def _float64_hist_trees(stock: Callable[..., None], op_type: str) -> Callable[..., None]:
    """HistGradientBoosting on a float64 input, compared in float64 as scikit-learn compares it: its
    thresholds are values of the training data, so a row computed in float32 (a StandardScaler before
    it) lands on the other side of one (160 of 1,500 rows moved, by up to 0.34, on a one-hot + scaler
    pipeline). The stock converter at ai.onnx.ml opset 3, its float64 thresholds and weights kept
    (_TreeAttributes); onnxruntime answers in float32: cast to the float64 outputs the graph declares."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from skl2onnx.proto import onnx_proto

    def convert(scope: Any, operator: Any, container: Any) -> None:
        source = operator.inputs[0]
        if not isinstance(source.type, DoubleTensorType):
            stock(scope, operator, _TreeAttributes(container))
            return
        twins = [
            scope.declare_local_variable(f"{o.raw_name}32", FloatTensorType())
            if isinstance(o.type, DoubleTensorType)
            else o
            for o in operator.outputs
        ]
        wide = _TreeAttributes(container, wide=True)
        stock(scope, _Retyped(operator, [source], twins), wide, op_type, "ai.onnx.ml", 3)
        for twin, output in zip(twins, operator.outputs, strict=True):
            if twin is not output:
                _cast(scope, container, twin.full_name, output.full_name, onnx_proto.TensorProto.DOUBLE)

    return convert


def _float64_svr(stock: Callable[..., None]) -> Callable[..., None]:
    """SVR in plain ONNX ops: value = sum_i dual_i * K(x, sv_i) + intercept.

    The RBF kernel is exp(-gamma * sum_j (x_j - sv_ij)^2), summed over differences as libsvm does
    (not |x|^2 + |sv|^2 - 2 x.sv, which turns inf - inf into NaN on extreme rows)."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.proto import onnx_proto

    def convert(scope: Any, operator: Any, container: Any) -> None:
        svr = operator.raw_operator
        if not isinstance(operator.inputs[0].type, DoubleTensorType):
            stock(scope, operator, container)
            return
        if svr.kernel != "rbf":
            raise NotImplementedError(f"SVR with kernel {svr.kernel!r} in float64 (only rbf)")
        double = onnx_proto.TensorProto.DOUBLE
        support = np.asarray(svr.support_vectors_, dtype=np.float64)
        names = {
            key: scope.get_unique_variable_name(key)
            for key in ("support", "axes", "rows", "diff", "sq", "dist", "gamma", "scaled", "kernel", "dual")
        }
        container.add_initializer(names["support"], double, [1, *support.shape], support.ravel().tolist())
        container.add_initializer(names["axes"], onnx_proto.TensorProto.INT64, [1], [1])
        container.add_initializer(names["gamma"], double, [], [-float(svr._gamma)])
        dual = np.asarray(svr.dual_coef_, dtype=np.float64).reshape(-1, 1)
        container.add_initializer(names["dual"], double, list(dual.shape), dual.ravel().tolist())
        intercept = scope.get_unique_variable_name("intercept")
        container.add_initializer(intercept, double, [1], [float(svr.intercept_[0])])

        def node(op: str, inputs: list[str], output: str, **attrs: Any) -> None:
            container.add_node(op, inputs, output, name=scope.get_unique_operator_name(op), **attrs)

        x = operator.input_full_names[0]
        node("Unsqueeze", [x, names["axes"]], names["rows"])  # (n, 1, features)
        node("Sub", [names["rows"], names["support"]], names["diff"])  # (n, support vectors, features)
        node("Mul", [names["diff"], names["diff"]], names["sq"])
        node("ReduceSum", [names["sq"], _axis_constant(scope, container, 2)], names["dist"], keepdims=0)
        node("Mul", [names["dist"], names["gamma"]], names["scaled"])
        node("Exp", [names["scaled"]], names["kernel"])
        product = scope.get_unique_variable_name("product")
        node("MatMul", [names["kernel"], names["dual"]], product)
        node("Add", [product, intercept], operator.outputs[0].full_name)

    return convert


def _axis_constant(scope: Any, container: Any, axis: int) -> str:
    from skl2onnx.proto import onnx_proto

    name = scope.get_unique_variable_name(f"axis{axis}")
    container.add_initializer(name, onnx_proto.TensorProto.INT64, [1], [axis])
    return name


@cache
def _register_converters() -> None:
    """Swap in the float64 converters above, once per process (skl2onnx keeps one registry)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common._registration import get_converter, get_shape_calculator
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    replacements: list[tuple[type, Callable[[Any], Callable[..., None]]]] = [
        (SimpleImputer, _float64_imputer),
        (SVR, _float64_svr),
        (HistGradientBoostingClassifier, lambda stock: _float64_hist_trees(stock, "TreeEnsembleClassifier")),
        (HistGradientBoostingRegressor, lambda stock: _float64_hist_trees(stock, "TreeEnsembleRegressor")),
    ]
    for model in (DecisionTreeClassifier, RandomForestClassifier, GradientBoostingClassifier):
        replacements.append((model, lambda stock: _float32_trees(stock, "TreeEnsembleClassifier")))
    for model in (DecisionTreeRegressor, RandomForestRegressor, GradientBoostingRegressor):
        replacements.append((model, lambda stock: _float32_trees(stock, "TreeEnsembleRegressor")))
    for model, wrap in replacements:
        alias = f"Sklearn{model.__name__}"
        stock = get_converter(alias)
        update_registered_converter(
            model, alias, get_shape_calculator(alias), wrap(stock), options=stock.get_allowed_options()
        )
