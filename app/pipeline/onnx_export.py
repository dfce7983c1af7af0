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
- Gradient-boosted trees, registered here: LightGBM and XGBoost through onnxmltools' converters,
  CatBoost through its own ONNX export. Each graph computes as its library does (LightGBM in float64;
  XGBoost on float32 features, adding tree by tree in float32; CatBoost on float32 features, adding in
  float64), where the converters compute in float32 (up to 2.2e-6 off on diabetes).

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
    """The pipeline's StandardScaler and the raw columns it scales (both shapes build_pipeline makes),
    for serving to refuse the rows scikit-learn refuses; None when no row is refused."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    if _answers_every_finite_row(pipeline.steps[-1][1]):
        return None
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


# The packages of LightGBM's, XGBoost's and CatBoost's models (and of LabelledXGBClassifier's base).
_BOOSTER_LIBRARIES = ("lightgbm.", "xgboost.", "catboost.")


def _answers_every_finite_row(model: Any) -> bool:
    """LightGBM, XGBoost and CatBoost answer a row whose standardised value overflows: their trees
    send +-inf down a branch (in the graph too, measured on the probe rows), where scikit-learn's
    estimators refuse it."""
    return any(kind.__module__.startswith(_BOOSTER_LIBRARIES) for kind in type(model).__mro__)


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
    the stock converter at ai.onnx.ml opset 3. Its attributes are float32 (skl2onnx writes no
    `*_as_tensor`), which is exact here: a row already rounded to float32 takes the branch it takes
    in scikit-learn, whose thresholds are chosen between float32 values."""
    from skl2onnx.common.data_types import DoubleTensorType

    def convert(scope: Any, operator: Any, container: Any) -> None:
        source = operator.inputs[0]
        if not isinstance(source.type, DoubleTensorType):
            stock(scope, operator, container)
            return
        wide = _widened(scope, container, _float32(scope, container, source))
        _float_outputs(
            scope,
            operator,
            container,
            [wide],
            lambda scope, operator, container: stock(scope, operator, container, op_type, "ai.onnx.ml", 3),
        )

    return convert


def _float32(scope: Any, container: Any, source: Any) -> Any:
    """A float64 variable rounded to float32, as the libraries that compute in float32 round it."""
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.proto import onnx_proto

    narrow = scope.declare_local_variable("x32", FloatTensorType(source.type.shape))
    _cast(scope, container, source.full_name, narrow.full_name, onnx_proto.TensorProto.FLOAT)
    return narrow


def _widened(scope: Any, container: Any, narrow: Any) -> Any:
    """A float32 variable as float64, for tree ops whose thresholds are float64."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.proto import onnx_proto

    wide = scope.declare_local_variable("x32as64", DoubleTensorType(narrow.type.shape))
    _cast(scope, container, narrow.full_name, wide.full_name, onnx_proto.TensorProto.DOUBLE)
    return wide


def _float_outputs(
    scope: Any, operator: Any, container: Any, inputs: list[Any], convert: Callable[..., None]
) -> None:
    """`convert` run on the operator seen with `inputs` and float32 twins of its float64 outputs
    (onnxruntime's ai.onnx.ml tree ops answer in float32 only), then the twins cast to the float64
    outputs the graph declares."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from skl2onnx.proto import onnx_proto

    twins = [
        scope.declare_local_variable(f"{o.raw_name}32", FloatTensorType())
        if isinstance(o.type, DoubleTensorType)
        else o
        for o in operator.outputs
    ]
    convert(scope, _Retyped(operator, inputs, twins), container)
    for twin, output in zip(twins, operator.outputs, strict=True):
        if twin is not output:
            _cast(scope, container, twin.full_name, output.full_name, onnx_proto.TensorProto.DOUBLE)


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


# --- gradient-boosted trees: onnxmltools' converters (LightGBM, XGBoost), CatBoost's own export ----

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# The tree attributes ai.onnx.ml opset 3 also takes as a float64 tensor, `<name>_as_tensor`.
_FLOAT64_ATTRIBUTES = ("nodes_values", "class_weights", "target_weights", "base_values")
# The options a classifier's converter takes, as skl2onnx's LightGBM example registers them (to_onnx
# passes zipmap=False: the probabilities as a matrix).
_CLASSIFIER_OPTIONS: dict[str, Any] = {"nocl": [True, False], "zipmap": [True, False, "columns"]}

_CATBOOST_CLASSIFIER = "CatBoostCatBoostClassifier"

Rewrite = Callable[[str, list[str], list[str], dict[str, Any]], None]


class _TreeNodes:
    """A converter's container, except that each tree-ensemble node it adds goes to `rewrite`
    (op type, inputs, outputs, attributes) to be written otherwise."""

    def __init__(self, container: Any, rewrite: Rewrite) -> None:
        self._container, self._rewrite = container, rewrite

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, **attrs: Any) -> None:
        if op_type not in _TREE_OPS:
            self._container.add_node(op_type, inputs, outputs, **attrs)
            return
        attrs.pop("op_domain", None)
        attrs.pop("op_version", None)
        listed = [inputs] if isinstance(inputs, str) else list(inputs)
        self._rewrite(op_type, listed, [outputs] if isinstance(outputs, str) else list(outputs), attrs)


def _add(scope: Any, container: Any, op: str, inputs: list[str], output: str = "", **attrs: Any) -> str:
    """A node of `op`, named by the scope; returns its output (a new variable unless given)."""
    output = output or scope.get_unique_variable_name(op.lower())
    container.add_node(op, inputs, output, name=scope.get_unique_operator_name(op), **attrs)
    return output


def _float64_tree_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """Thresholds, leaf values and base values as float64 tensors (ai.onnx.ml opset 3): onnxruntime
    then compares a float64 input with them and adds leaf values in float64."""
    from onnx import numpy_helper

    rewritten = {}
    for key, value in attrs.items():
        if key in _FLOAT64_ATTRIBUTES:
            rewritten[f"{key}_as_tensor"] = numpy_helper.from_array(np.asarray(value, dtype=np.float64))
        elif key != "nodes_hitrates":  # unused by onnxruntime, and float32 only
            rewritten[key] = value
    return rewritten


def _float64_lightgbm(stock: Callable[..., None]) -> Callable[..., None]:
    """LightGBM compares the float64 features with float64 thresholds and adds its leaf values in
    float64; onnxmltools writes both as float32 attributes and the graph computes in float32
    (regression on diabetes: 9e-7 off, near the tolerance). Here its tree nodes get the float64
    values of its dump (17 significant digits, exact) and the float64 input itself."""

    def convert(scope: Any, operator: Any, container: Any) -> None:
        def float64_trees(op_type: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any]) -> None:
            attrs = _float64_tree_attributes(attrs)
            container.add_node(op_type, inputs, outputs, op_domain="ai.onnx.ml", op_version=3, **attrs)

        _float_outputs(
            scope,
            operator,
            container,
            operator.inputs,
            lambda scope, operator, _: stock(scope, operator, _TreeNodes(container, float64_trees)),
        )

    return convert


def _float32_xgboost(stock: Callable[..., None]) -> Callable[..., None]:
    """XGBoost rounds the features to float32 and compares them with float32 thresholds (onnxmltools
    writes the same), then adds its trees' leaf values one tree at a time in float32, starting from
    the base score. onnxruntime's tree op adds them in another order: 2.2e-6 apart on diabetes (the
    values are ~150, where float32 steps are 1.5e-5). Here each tree is an output column of its own,
    and CumSum, which adds in order, adds them as XGBoost does: the same float32 numbers."""

    def convert(scope: Any, operator: Any, container: Any) -> None:
        def tree_by_tree(op_type: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any]) -> None:
            scores = _added_in_order(scope, container, inputs, attrs, op_type)
            _answers_from_scores(scope, container, scores, outputs, attrs, op_type)

        narrow = _float32(scope, container, operator.inputs[0])
        _float_outputs(
            scope,
            operator,
            container,
            [narrow],
            lambda scope, operator, _: stock(scope, operator, _TreeNodes(container, tree_by_tree)),
        )

    return convert


def _added_in_order(
    scope: Any, container: Any, inputs: list[str], attrs: dict[str, Any], op_type: str
) -> str:
    """XGBoost's margins, (rows, classes) in float32: base score + tree 0 + tree 1 + ..., tree t
    belonging to class t % classes (one tree per class and round, XGBoost's order)."""
    from skl2onnx.proto import onnx_proto

    leaves = "class" if op_type == "TreeEnsembleClassifier" else "target"
    trees = np.asarray(attrs[f"{leaves}_treeids"], dtype=np.int64)
    columns = np.asarray(attrs[f"{leaves}_ids"], dtype=np.int64)
    weights = np.asarray(attrs[f"{leaves}_weights"], dtype=np.float32)
    n_trees, n_columns = int(trees.max()) + 1, int(columns.max()) + 1
    if n_trees % n_columns or (columns != trees % n_columns).any():
        raise NotImplementedError("XGBoost trees that are not one per class and round")
    base = np.broadcast_to(np.asarray(attrs.get("base_values", [0.0]), dtype=np.float32), (n_columns,))
    first = trees < n_columns
    # XGBoost's first addition, base + leaf value, rounded to float32 as it rounds it.
    weights[first] = weights[first] + base[columns[first]]
    per_tree = {k: v for k, v in attrs.items() if k.startswith("nodes_") and k != "nodes_hitrates"}
    per_tree |= {
        "target_treeids": trees.tolist(),
        "target_nodeids": list(attrs[f"{leaves}_nodeids"]),
        "target_ids": trees.tolist(),
        "target_weights": weights.tolist(),
        "n_targets": n_trees,
    }

    def constant(name: str, values: list[int], shape: list[int]) -> str:
        unique = scope.get_unique_variable_name(name)
        container.add_initializer(unique, onnx_proto.TensorProto.INT64, shape, values)
        return unique

    leaf_values = _add(scope, container, "TreeEnsembleRegressor", inputs, op_domain="ai.onnx.ml", **per_tree)
    rounds = n_trees // n_columns
    shape = constant("rounds", [-1, rounds, n_columns], [3])
    by_round = _add(scope, container, "Reshape", [leaf_values, shape])
    running = _add(scope, container, "CumSum", [by_round, constant("axis", [1], [])])
    return _add(scope, container, "Gather", [running, constant("last", [rounds - 1], [])], axis=1)


def _answers_from_scores(
    scope: Any, container: Any, scores: str, outputs: list[str], attrs: dict[str, Any], op_type: str
) -> None:
    """What the tree op would have answered from these margins: values, or a label and
    probabilities (post_transform LOGISTIC: one margin, two columns; SOFTMAX: one per class)."""
    from skl2onnx.proto import onnx_proto

    transform = attrs.get("post_transform", "NONE")
    if op_type == "TreeEnsembleRegressor":
        if transform != "NONE":
            raise NotImplementedError(f"XGBoost regression with post_transform {transform}")
        _add(scope, container, "Identity", [scores], outputs[0])
        return
    label, probabilities = outputs
    if transform == "LOGISTIC":
        positive = _add(scope, container, "Sigmoid", [scores])
        one = scope.get_unique_variable_name("one")
        container.add_initializer(one, onnx_proto.TensorProto.FLOAT, [], [1.0])
        negative = _add(scope, container, "Sub", [one, positive])
        _add(scope, container, "Concat", [negative, positive], probabilities, axis=1)
    elif transform == "SOFTMAX":
        _add(scope, container, "Softmax", [scores], probabilities, axis=1)
    else:
        raise NotImplementedError(f"XGBoost classification with post_transform {transform}")
    _label_of_most_probable(scope, container, probabilities, label, attrs)


def _label_of_most_probable(
    scope: Any, container: Any, probabilities: str, label: str, attrs: dict[str, Any]
) -> None:
    """The label output: the class of the largest probability (the first on a tie, as argmax picks),
    among the class labels the tree op's attributes name."""
    from skl2onnx.proto import onnx_proto

    classes = scope.get_unique_variable_name("classes")
    if "classlabels_strings" in attrs:
        names = [c if isinstance(c, bytes) else str(c).encode() for c in attrs["classlabels_strings"]]
        container.add_initializer(classes, onnx_proto.TensorProto.STRING, [len(names)], names)
    else:
        numbers = [int(c) for c in attrs["classlabels_int64s"]]
        container.add_initializer(classes, onnx_proto.TensorProto.INT64, [len(numbers)], numbers)
    best = _add(scope, container, "ArgMax", [probabilities], axis=1, keepdims=0)
    _add(scope, container, "Gather", [classes, best], label)


def _catboost(scope: Any, operator: Any, container: Any) -> None:
    """CatBoost's own ONNX export of the model (its tree ops, without the ZipMap it ends with), spliced
    into the pipeline's graph. CatBoost rounds the features to float32 and compares them with float32
    borders, but adds its leaf values in float64: the export's float32 sums were 2e-6 off on diabetes,
    so its tree nodes get float64 attributes and the float32-rounded input as float64."""
    from catboost.utils import convert_to_onnx_object
    from onnx import helper, numpy_helper
    from skl2onnx.proto import onnx_proto

    graph = convert_to_onnx_object(operator.raw_operator).graph
    if len(graph.input) != 1:
        raise NotImplementedError("a CatBoost model with more than one input")
    wide = _widened(scope, container, _float32(scope, container, operator.inputs[0]))
    renamed = {graph.input[0].name: wide.full_name}

    def ours(name: str) -> str:
        if name not in renamed:
            renamed[name] = scope.get_unique_variable_name(name)
        return renamed[name]

    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        container.add_initializer(
            ours(initializer.name), initializer.data_type, list(array.shape), array.ravel().tolist()
        )
    for node in graph.node:
        if node.op_type == "ZipMap":  # probabilities as maps: the matrix it reads is what we answer
            renamed[node.output[0]] = ours(node.input[0])
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _TREE_OPS:
            attrs = _float64_tree_attributes(attrs) | {"op_version": 3}
        container.add_node(
            node.op_type,
            [ours(name) for name in node.input],
            [ours(name) for name in node.output],
            op_domain=node.domain,
            name=scope.get_unique_operator_name(node.op_type),
            **attrs,
        )
    answers = [ours(o.name) for o in graph.output]
    double = onnx_proto.TensorProto.DOUBLE
    if len(operator.outputs) == 1:  # a regressor: its predictions, (rows, 1)
        _cast(scope, container, answers[0], operator.outputs[0].full_name, double)
        return
    label, probabilities = operator.outputs
    _cast(scope, container, answers[-1], probabilities.full_name, double)
    classes = [c if isinstance(c, str) else int(c) for c in operator.raw_operator.classes_]
    key = "classlabels_strings" if all(isinstance(c, str) for c in classes) else "classlabels_int64s"
    _label_of_most_probable(scope, container, probabilities.full_name, label.full_name, {key: classes})


def _catboost_classifier_outputs(
    scope: Any, model: Any, inputs: list[Any], custom_parsers: Any = None
) -> Any:
    """skl2onnx's parser for CatBoost's classifier: a label and probabilities. skl2onnx's own parser
    gives a classifier those outputs only if it is a scikit-learn ClassifierMixin, which CatBoost's
    is not (to_onnx asks for no ZipMap)."""
    from skl2onnx.common.data_types import Int64TensorType, guess_tensor_type

    operator = scope.declare_local_operator(_CATBOOST_CLASSIFIER, model)
    operator.inputs = inputs
    operator.outputs.append(scope.declare_local_variable("label", Int64TensorType()))
    operator.outputs.append(scope.declare_local_variable("probabilities", guess_tensor_type(inputs[0].type)))
    return operator.outputs


@cache
def _register_converters() -> None:
    """Swap in the float64 converters above and register the gradient-boosted trees', once per
    process (skl2onnx keeps one registry)."""
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
    _register_boosters()


def _register_boosters() -> None:
    """LightGBM and XGBoost through onnxmltools' converters, as skl2onnx's example "Convert a pipeline
    with a LightGBM classifier" registers them; CatBoost through its own export. The bare library
    classes too: `models import` converts models fitted elsewhere."""
    from catboost import CatBoostClassifier, CatBoostRegressor
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    from app.pipeline.xgboost_labels import LabelledXGBClassifier

    boosters: list[tuple[type, str, Callable[..., None]]] = [
        (LGBMClassifier, "LightGbmLGBMClassifier", _float64_lightgbm(convert_lightgbm)),
        (LGBMRegressor, "LightGbmLGBMRegressor", _float64_lightgbm(convert_lightgbm)),
        (XGBClassifier, "XGBoostXGBClassifier", _float32_xgboost(convert_xgboost)),
        (LabelledXGBClassifier, "XGBoostLabelledXGBClassifier", _float32_xgboost(convert_xgboost)),
        (XGBRegressor, "XGBoostXGBRegressor", _float32_xgboost(convert_xgboost)),
        (CatBoostClassifier, _CATBOOST_CLASSIFIER, _catboost),
        (CatBoostRegressor, "CatBoostCatBoostRegressor", _catboost),
    ]
    for model, alias, convert in boosters:
        classifier = "Classifier" in model.__name__
        update_registered_converter(
            model,
            alias,
            calculate_linear_classifier_output_shapes
            if classifier
            else calculate_linear_regressor_output_shapes,
            convert,
            options=_CLASSIFIER_OPTIONS if classifier else None,
            parser=_catboost_classifier_outputs if model is CatBoostClassifier else None,
        )
