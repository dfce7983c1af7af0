"""Step 3 of an import: the model as one ONNX graph in this service's layout, and the library's own answers.

The converters are the libraries' own: skl2onnx for scikit-learn (with onnxmltools' LightGBM and
XGBoost converters registered for pipelines, app.pipeline.onnx_export), onnxmltools for a LightGBM or
XGBoost model alone, CatBoost's own ONNX export. Their graphs take float32 rows and answer in their
own shapes; around each this module puts what serving expects (app.adapters.onnx_model): float64
inputs (`X`, or one `c<i>` per column when some are categories), and one float64 output,
`probabilities` (classes in the model's order) or `values`. Category strings become the codes a
LightGBM model was trained on with a LabelEncoder node (a gap or an unseen category: NaN, as
LightGBM reads them). Nothing here changes the model's own nodes.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.adapters.onnx_model import NUMERIC_INPUT, column_input
from app.core.artifacts import MISSING_CATEGORY
from app.importing.errors import Refused
from app.importing.schema import ModelSchema
from app.importing.sources import Loaded

# onnxmltools 1.16 writes LightGBM and XGBoost graphs up to this opset.
BOOSTER_OPSET = 15
PROBABILITIES = "probabilities"
VALUES = "values"
_PREFIX = "import__"
_FLOAT, _DOUBLE, _STRING = 1, 11, 8  # onnx.TensorProto element types

Answers = Callable[[np.ndarray], np.ndarray]


def compile_model(loaded: Loaded, schema: ModelSchema) -> tuple[Any, bool]:
    """The ONNX ModelProto, and whether it takes one float64 matrix `X` (else one input per column)."""
    flavor = loaded.flavor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flavor == "sklearn":
            return _sklearn(loaded, schema)
        core = _core_graph(loaded, schema)
    return _wrap(core, schema)


def frame(matrix: np.ndarray, schema: ModelSchema) -> pd.DataFrame:
    """Rows as the library reads them: numbers as float64, categories as strings (LightGBM's as
    pandas categories in their code order), gaps as NaN."""
    columns: dict[str, Any] = {}
    for j, feature in enumerate(schema.features):
        column = matrix[:, j]
        if feature.type == "numeric":
            columns[feature.name] = pd.to_numeric(pd.Series(column), errors="coerce").astype(np.float64)
            continue
        values = pd.Series([None if _is_gap(v) else str(v) for v in column], dtype=object)
        codes = schema.codes.get(feature.name)
        columns[feature.name] = pd.Categorical(values, categories=codes) if codes is not None else values
    return pd.DataFrame(columns)


def native_answers(loaded: Loaded, schema: ModelSchema) -> Answers:
    """The original library's answers, as serving's: probabilities (rows x classes) or values."""
    model, flavor, classification = loaded.model, loaded.flavor, schema.task == "classification"

    def two_columns(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    if flavor == "lightgbm":
        if hasattr(model, "booster_"):
            call = model.predict_proba if classification else model.predict
            return lambda m: np.asarray(call(frame(m, schema)), dtype=np.float64)
        return lambda m: (
            two_columns(model.predict(frame(m, schema)))
            if classification
            else np.asarray(model.predict(frame(m, schema)), dtype=np.float64)
        )
    if flavor == "xgboost":
        import xgboost

        if hasattr(model, "get_booster"):
            call = model.predict_proba if classification else model.predict
            return lambda m: np.asarray(call(_numbers(m)), dtype=np.float64)
        names = model.feature_names

        def booster(m: np.ndarray) -> np.ndarray:
            answers = model.predict(xgboost.DMatrix(_numbers(m), feature_names=names, missing=np.nan))
            return two_columns(answers) if classification else np.asarray(answers, dtype=np.float64)

        return booster
    if flavor == "catboost":
        kind = "Probability" if classification else "RawFormulaVal"
        return lambda m: np.asarray(model.predict(_numbers(m), prediction_type=kind), dtype=np.float64)
    if flavor == "sklearn":
        call = model.predict_proba if classification else model.predict
        by_name = getattr(model, "feature_names_in_", None) is not None
        return lambda m: np.asarray(call(frame(m, schema) if by_name else m), dtype=np.float64)
    return _onnx_answers(model, schema)


def _numbers(matrix: np.ndarray) -> np.ndarray:
    return np.asarray(matrix, dtype=np.float64)


def _is_gap(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == MISSING_CATEGORY


# --- the library's converters -------------------------------------------------------------------


def _core_graph(loaded: Loaded, schema: ModelSchema) -> Any:
    """The library's own ONNX graph of the model, float32 rows in."""
    import onnx

    model, flavor, width = loaded.model, loaded.flavor, len(schema.features)
    try:
        if flavor == "onnx":
            return onnx.ModelProto.FromString(model.SerializeToString())  # a copy to edit
        if flavor == "catboost":
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / "model.onnx"
                model.save_model(str(path), format="onnx")
                return onnx.load(str(path))
        from onnxmltools.convert import convert_lightgbm, convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        types = [("input", FloatTensorType([None, width]))]
        if flavor == "lightgbm":
            return convert_lightgbm(model, initial_types=types, zipmap=False, target_opset=BOOSTER_OPSET)
        return convert_xgboost(_unnamed(model), initial_types=types, target_opset=BOOSTER_OPSET)
    except Refused:
        raise
    except Exception as exc:  # the converters raise many kinds: each means "not convertible"
        raise Refused(
            "compile",
            f"the {flavor} converter cannot convert it: {type(exc).__name__}: {exc}".splitlines()[0],
        ) from None


def _unnamed(model: Any) -> Any:
    """The XGBoost model without its feature names, which onnxmltools cannot read (it wants f0, f1,
    ...): the graph takes the columns by position, in the model's order, either way."""
    if hasattr(model, "get_booster"):
        booster = model.get_booster().copy()
        booster.feature_names = None
        model = type(model)(**model.get_params())
        model._Booster = booster
        return model
    copy = model.copy()
    copy.feature_names = None
    return copy


def _sklearn(loaded: Loaded, schema: ModelSchema) -> tuple[Any, bool]:
    """A scikit-learn estimator or Pipeline through skl2onnx (with the boosters' converters
    registered), its inputs named by the columns it selects, renamed to c<i>."""
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from sklearn.pipeline import Pipeline

    from app.pipeline.onnx_export import ExportError, to_onnx

    model = loaded.model
    pipeline = model if isinstance(model, Pipeline) else Pipeline([("model", model)])
    types = None
    if getattr(model, "feature_names_in_", None) is not None:  # columns selected by name
        types = [
            (f.name, StringTensorType([None, 1]) if f.type == "categorical" else DoubleTensorType([None, 1]))
            for f in schema.features
        ]
    try:
        graph = to_onnx(pipeline, schema.task, schema.features, initial_types=types)
    except ExportError as exc:
        unknown = _unconvertible_step(pipeline)  # after to_onnx: every converter is registered
        if unknown is not None:
            raise Refused(
                "compile",
                f"the step {unknown} has no ONNX converter: a custom transformer cannot be compiled "
                "(rewrite it with scikit-learn's own transformers, or export your own ONNX graph and "
                "import that)",
            ) from None
        raise Refused("compile", str(exc)) from None
    if types is None:
        return graph, schema_is_numeric(schema)
    _rename_inputs(graph, {f.name: column_input(i) for i, f in enumerate(schema.features)})
    _cast_output(graph, schema)
    return graph, False


def schema_is_numeric(schema: ModelSchema) -> bool:
    return all(f.type == "numeric" for f in schema.features)


def _unconvertible_step(pipeline: Any, path: str = "") -> str | None:
    """The first step (by its path of names) that no registered converter takes."""
    from skl2onnx import get_model_alias
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    for name, step in pipeline.steps:
        where = f"{path}{name}"
        found: str | None = None
        if isinstance(step, Pipeline):
            found = _unconvertible_step(step, f"{where} > ")
        elif isinstance(step, ColumnTransformer):
            for inner_name, transformer, _ in step.transformers_:
                if isinstance(transformer, str):  # "drop", "passthrough"
                    continue
                if isinstance(transformer, Pipeline):
                    found = _unconvertible_step(transformer, f"{where} > {inner_name} > ")
                else:
                    found = _unconvertible_step(Pipeline([(inner_name, transformer)]), f"{where} > ")
                if found:
                    break
        else:
            try:
                get_model_alias(type(step))
            except RuntimeError:
                found = f"'{where}' ({type(step).__name__})"
        if found:
            return found
    return None


# --- around the library's graph: this service's inputs and output -------------------------------


def _wrap(core: Any, schema: ModelSchema) -> tuple[Any, bool]:
    """Our float64 inputs in front of the library's graph, our one float64 output after it."""
    import onnx
    from onnx import helper

    graph = core.graph
    inputs = list(graph.input)
    numeric = schema_is_numeric(schema)
    nodes: list[Any] = []
    width = len(schema.features)
    if len(inputs) == 1:
        target = inputs[0]
        target_type = _elem_type(target)
        if numeric:
            ours = [helper.make_tensor_value_info(NUMERIC_INPUT, _DOUBLE, [None, width])]
            nodes.append(helper.make_node("Cast", [NUMERIC_INPUT], [target.name], to=target_type))
        else:
            ours, parts = [], []
            for i, feature in enumerate(schema.features):
                name, part = column_input(i), f"{_PREFIX}col{i}"
                if feature.type == "categorical":
                    ours.append(helper.make_tensor_value_info(name, _STRING, [None, 1]))
                    nodes.append(
                        _category_codes(
                            name, part, schema.codes.get(feature.name) or feature.categories or []
                        )
                    )
                else:
                    ours.append(helper.make_tensor_value_info(name, _DOUBLE, [None, 1]))
                    nodes.append(helper.make_node("Cast", [name], [part], to=_FLOAT))
                parts.append(part)
            joined = f"{_PREFIX}rows"
            nodes.append(helper.make_node("Concat", parts, [joined], axis=1))
            nodes.append(helper.make_node("Cast", [joined], [target.name], to=target_type))
    else:
        # One input per column (an ONNX file with named inputs): ours, by position, cast to theirs.
        if len(inputs) != width:
            raise Refused("compile", f"the graph has {len(inputs)} inputs for {width} columns")
        numeric = False
        ours = []
        by_name = {value.name: value for value in inputs}
        for i, feature in enumerate(schema.features):
            theirs = by_name.get(feature.name, inputs[i])
            kind = _elem_type(theirs)
            ours.append(
                helper.make_tensor_value_info(
                    column_input(i), _STRING if kind == _STRING else _DOUBLE, [None, 1]
                )
            )
            if kind == _STRING:
                nodes.append(helper.make_node("Identity", [column_input(i)], [theirs.name]))
            else:
                nodes.append(helper.make_node("Cast", [column_input(i)], [theirs.name], to=kind))
    del graph.input[:]
    graph.input.extend(ours)
    theirs_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + theirs_nodes)
    _cast_output(core, schema)
    _use_opset(core, "ai.onnx.ml", 2)
    _use_opset(core, "", BOOSTER_OPSET)  # CatBoost's graph imports none, and Cast needs one
    try:
        onnx.checker.check_model(core)
    except Exception as exc:
        raise Refused(
            "compile", f"the compiled graph is not valid ONNX: {str(exc).splitlines()[0]}"
        ) from None
    return core, numeric


def _category_codes(source: str, target: str, codes: list[str]) -> Any:
    """Category string -> its code as a float (LightGBM's categorical input); else NaN."""
    from onnx import helper

    return helper.make_node(
        "LabelEncoder",
        [source],
        [target],
        domain="ai.onnx.ml",
        keys_strings=codes,
        values_floats=[float(i) for i in range(len(codes))],
        default_float=float("nan"),
    )


def _cast_output(model: Any, schema: ModelSchema) -> None:
    """The graph's one output: probabilities (any ZipMap undone) or values, as float64."""
    from onnx import helper

    graph = model.graph
    outputs = list(graph.output)
    if schema.task == "classification":
        chosen = next((o for o in outputs if "prob" in o.name.lower()), outputs[-1])
    else:
        chosen = next(
            (o for o in outputs if o.type.HasField("tensor_type") and _elem_type(o) in (_FLOAT, _DOUBLE)),
            outputs[0],
        )
    source = chosen.name
    if not chosen.type.HasField("tensor_type"):  # a ZipMap's list of dicts: take its input tensor
        zipmap = next((n for n in graph.node if source in n.output and n.op_type == "ZipMap"), None)
        if zipmap is None:
            raise Refused("compile", f"the graph's output {source} is not a tensor of probabilities")
        source = zipmap.input[0]
        graph.node.remove(zipmap)
    name = PROBABILITIES if schema.task == "classification" else VALUES
    nodes = [helper.make_node("Cast", [source], [f"{_PREFIX}{name}"], to=_DOUBLE)]
    if schema.task == "classification":
        out = helper.make_tensor_value_info(name, _DOUBLE, [None, len(schema.classes)])
        nodes.append(helper.make_node("Identity", [f"{_PREFIX}{name}"], [name]))
    else:
        shape = f"{_PREFIX}shape"
        graph.initializer.append(helper.make_tensor(shape, 7, [1], [-1]))
        out = helper.make_tensor_value_info(name, _DOUBLE, [None])
        nodes.append(helper.make_node("Reshape", [f"{_PREFIX}{name}", shape], [name]))
    if source == name:  # our name already taken by theirs: rename theirs
        _rename_tensor(graph, name, f"{_PREFIX}theirs_{name}")
        nodes[0].input[0] = f"{_PREFIX}theirs_{name}"
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(out)


def _rename_inputs(model: Any, names: dict[str, str]) -> None:
    for value in model.graph.input:
        if value.name in names:
            old = value.name
            _rename_tensor(model.graph, old, names[old])
            value.name = names[old]


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def _use_opset(model: Any, domain: str, version: int) -> None:
    """At least this opset of the domain: the nodes put around the library's graph need it."""
    for opset in model.opset_import:
        if opset.domain == domain:
            opset.version = max(opset.version, version)
            return
    entry = model.opset_import.add()
    entry.domain, entry.version = domain, version


def _elem_type(value: Any) -> int:
    return int(value.type.tensor_type.elem_type)


# --- an ONNX file's own answers -----------------------------------------------------------------


def _onnx_answers(model: Any, schema: ModelSchema) -> Answers:
    """The user's graph as they gave it, run by onnxruntime: the reference a wrapped copy must match."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]
    if schema.task == "classification":
        wanted = next((n for n in outputs if "prob" in n.lower()), outputs[-1])
    else:
        wanted = outputs[0]
    numpy_of = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}

    def answer(matrix: np.ndarray) -> np.ndarray:
        if len(inputs) == 1:
            feed = {inputs[0].name: np.asarray(matrix, dtype=numpy_of.get(inputs[0].type, np.float32))}
        else:
            by_name = {f.name: j for j, f in enumerate(schema.features)}
            feed = {}
            for i, value in enumerate(inputs):
                column = matrix[:, by_name.get(value.name, i)].reshape(-1, 1)
                if value.type == "tensor(string)":
                    feed[value.name] = np.array(
                        [[MISSING_CATEGORY if _is_gap(v) else str(v)] for v in column[:, 0]]
                    )
                else:
                    feed[value.name] = column.astype(numpy_of.get(value.type, np.float32))
        found = session.run([wanted], feed)[0]
        if isinstance(found, list):  # ZipMap: one {class: probability} per row
            return np.array([[row[_key(row, c)] for c in schema.classes] for row in found], dtype=np.float64)
        answers = np.asarray(found, dtype=np.float64)
        return answers.reshape(-1) if schema.task == "regression" else answers

    return answer


def _key(row: dict[Any, float], label: str) -> Any:
    return label if label in row else int(label)
