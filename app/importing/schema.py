"""Step 2 of an import: the model's input columns, its task and its classes.

In this order: MLflow's signature (names, types, which may be missing); else the model's own names
and categories (`feature_names_in_`, LightGBM's, XGBoost's and CatBoost's feature names and
categorical features); else the --sample's header. Classes and task come from the model; a native
booster file that stores class indexes only takes the sample's labels when they are as many (sorted,
as scikit-learn's LabelEncoder numbers them). What cannot be known is refused, saying what to pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from app.core.artifacts import Feature, Task
from app.importing.errors import Refused
from app.importing.sources import Loaded

# A feature's range, when nothing states it, is widened from the split thresholds by this share.
THRESHOLD_MARGIN = 0.1
# Boosters route a missing value down a branch of its own: their gaps are served without a sample.
NATIVE_GAPS = ("lightgbm", "xgboost", "catboost")
# The missing_fraction that lets serving take gaps in a column no data showed any in.
GAPS_ALLOWED = 1e-6
_MADE_UP_NAME = re.compile(r"^(Column_\d+|f\d+|\d+)$")


@dataclass
class ModelSchema:
    features: list[Feature]
    task: Task
    classes: list[str]  # classification: in the order of the model's probability columns
    # Categorical columns of a booster fed category codes: feature name -> categories, code order.
    codes: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]


def infer_schema(loaded: Loaded, sample: pd.DataFrame | None, target: str | None) -> ModelSchema:
    task, classes = _task_and_classes(loaded)
    columns, codes = _columns(loaded, sample, target)
    features = [
        _feature(name, categorical, required, codes, loaded, sample)
        for name, categorical, required in columns
    ]
    notes: list[str] = []
    if task == "classification":
        classes = _class_labels(classes, sample, target, notes)
    missing = [f.name for f in features if f.type == "categorical" and not f.categories]
    if missing:
        raise Refused(
            "schema",
            f"the categories of {', '.join(missing)} are not in the model: pass --sample with rows "
            "that hold them",
        )
    return ModelSchema(features, task, classes, codes, notes)


# --- columns ------------------------------------------------------------------------------------


def _columns(
    loaded: Loaded, sample: pd.DataFrame | None, target: str | None
) -> tuple[list[tuple[str, bool, bool]], dict[str, list[str]]]:
    """(name, categorical, required) per column in the model's order, and booster category codes."""
    own, codes = _own_columns(loaded)
    if loaded.signature is not None:
        named = [(c.name, c.categorical or c.name in codes, c.required) for c in loaded.signature]
        return named, codes
    if own is not None:
        return [(name, categorical, False) for name, categorical in own], codes
    if sample is not None:
        header = [c for c in sample.columns if c != target]
        width = _model_width(loaded)
        if width is not None and width != len(header):
            raise Refused(
                "schema",
                f"the model takes {width} columns and the sample has {len(header)} besides the target"
                f"{'' if target else ' (name it with --target)'}",
            )
        typed = [(name, not pd.api.types.is_numeric_dtype(sample[name]), False) for name in header]
        return typed, codes
    raise Refused(
        "schema",
        "the model does not name its input columns: pass --sample, a CSV whose header names them "
        "in the model's order (its rows are the parity check's)",
    )


def _own_columns(loaded: Loaded) -> tuple[list[tuple[str, bool]] | None, dict[str, list[str]]]:
    model, flavor = loaded.model, loaded.flavor
    if flavor == "lightgbm":
        booster = getattr(model, "booster_", model)
        names = booster.feature_name()
        info = booster.dump_model(num_iteration=0).get("feature_infos", {})
        categorical = [_is_category_info(info.get(name)) for name in names]
        codes: dict[str, list[str]] = {}
        pandas_categories = getattr(booster, "pandas_categorical", None) or []
        for name, categories in zip(
            [n for n, c in zip(names, categorical, strict=True) if c], pandas_categories, strict=False
        ):
            codes[name] = [str(c) for c in categories]
        # A categorical column trained from integer codes, not pandas categories: the codes are its values.
        return [(n, n in codes) for n in names] if not _generic(names) else None, codes
    if flavor == "xgboost":
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        types = booster.feature_types or []
        if "c" in types:
            raise Refused(
                "compile",
                "the XGBoost model has categorical splits, which onnxmltools cannot convert: encode "
                "those columns before XGBoost (a scikit-learn Pipeline with OneHotEncoder) and import that",
            )
        names = booster.feature_names
        return ([(n, False) for n in names] if names else None), {}
    if flavor == "catboost":
        names = list(model.feature_names_)
        if model.get_cat_feature_indices():
            raise Refused(
                "compile",
                "the CatBoost model has categorical features, which CatBoost's ONNX export does not "
                "take: one-hot encode them before CatBoost (a scikit-learn Pipeline) and import that",
            )
        return ([(n, False) for n in names] if not _generic(names) else None), {}
    if flavor == "sklearn":
        names_in = getattr(model, "feature_names_in_", None)
        if names_in is None:
            return None, {}
        categories = _encoded_categories(model)
        return [(str(n), str(n) in categories) for n in names_in], {}
    if flavor == "onnx":
        inputs = list(model.graph.input)
        if len(inputs) > 1 and all(_is_column_input(i) for i in inputs):
            return [(i.name, _elem_type(i) == 8) for i in inputs], {}  # 8: string
        return None, {}
    return None, {}


def _generic(names: list[str]) -> bool:
    """Names a library makes up when it was given none (LightGBM's Column_0, XGBoost's f0, CatBoost's 0)."""
    return all(_MADE_UP_NAME.match(name) for name in names)


def _is_category_info(info: Any) -> bool:
    """LightGBM's dump lists the values of a categorical feature; a numeric one has only its range."""
    return isinstance(info, dict) and bool(info.get("values"))


def _is_column_input(value: Any) -> bool:
    dims = value.type.tensor_type.shape.dim
    return len(dims) == 2 and dims[1].dim_value == 1


def _elem_type(value: Any) -> int:
    return int(value.type.tensor_type.elem_type)


def _model_width(loaded: Loaded) -> int | None:
    model, flavor = loaded.model, loaded.flavor
    if flavor == "lightgbm":
        return int(getattr(model, "booster_", model).num_feature())
    if flavor == "xgboost":
        return int((model.get_booster() if hasattr(model, "get_booster") else model).num_features())
    if flavor == "catboost":
        return len(model.feature_names_)
    if flavor == "sklearn":
        width = getattr(model, "n_features_in_", None)
        return int(width) if width is not None else None
    if flavor == "onnx":
        inputs = list(loaded.model.graph.input)
        if len(inputs) == 1:
            dims = inputs[0].type.tensor_type.shape.dim
            return int(dims[1].dim_value) if len(dims) == 2 and dims[1].dim_value else None
        return len(inputs)
    return None


def _encoded_categories(model: Any) -> dict[str, list[str]]:
    """The columns a fitted pipeline one-hot or ordinal encodes (by name), with their categories."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    found: dict[str, list[str]] = {}
    steps = model.steps if isinstance(model, Pipeline) else [("model", model)]
    for _, step in steps:
        if not isinstance(step, ColumnTransformer):
            continue
        for _, transformer, columns in step.transformers_:
            inner = transformer.steps if isinstance(transformer, Pipeline) else [("", transformer)]
            for _, part in inner:
                if isinstance(part, OneHotEncoder | OrdinalEncoder) and all(
                    isinstance(c, str) for c in columns
                ):
                    for column, categories in zip(columns, part.categories_, strict=True):
                        found[column] = [str(c) for c in categories if not _is_nan(c)]
    return found


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


# --- one feature ----------------------------------------------------------------------------------


def _feature(
    name: str,
    categorical: bool,
    required: bool,
    codes: dict[str, list[str]],
    loaded: Loaded,
    sample: pd.DataFrame | None,
) -> Feature:
    column = sample[name] if sample is not None and name in sample.columns else None
    if sample is not None and column is None:
        raise Refused("schema", f"the sample has no column {name!r}, which the model takes")
    # Gaps are served where the sample has them, and where the model routes them itself (the
    # boosters) unless MLflow's signature requires the column.
    observed = float(column.isna().mean()) if column is not None else 0.0
    native = loaded.flavor in NATIVE_GAPS and not required
    missing = observed or (GAPS_ALLOWED if native else 0.0)
    if categorical:
        categories = codes.get(name) or _model_categories(loaded, name)
        if categories is None and column is not None:
            categories = sorted(str(v) for v in column.dropna().unique())
        return Feature(
            name=name, type="categorical", categories=categories, missing_fraction=round(missing, 6)
        )
    low, high = _range(loaded, name, column)
    return Feature(name=name, type="numeric", min=low, max=high, missing_fraction=round(missing, 6))


def _model_categories(loaded: Loaded, name: str) -> list[str] | None:
    if loaded.flavor == "sklearn":
        return _encoded_categories(loaded.model).get(name)
    return None


def _range(loaded: Loaded, name: str, column: pd.Series | None) -> tuple[float | None, float | None]:
    if column is not None and column.notna().any():
        values = pd.to_numeric(column, errors="coerce")
        return float(values.min()), float(values.max())
    if loaded.flavor == "lightgbm":
        booster = getattr(loaded.model, "booster_", loaded.model)
        info = booster.dump_model(num_iteration=0).get("feature_infos", {}).get(name)
        if isinstance(info, dict) and "min_value" in info and not info.get("values"):
            return float(info["min_value"]), float(info["max_value"])
    if loaded.flavor == "xgboost":
        return _xgboost_range(loaded.model, name)
    return None, None


def _xgboost_range(model: Any, name: str) -> tuple[float | None, float | None]:
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    splits: list[float] = []
    for tree in booster.get_dump(dump_format="json"):
        _collect_splits(json.loads(tree), name, splits)
    if not splits:
        return None, None
    low, high = min(splits), max(splits)
    margin = (high - low) * THRESHOLD_MARGIN or 1.0
    return low - margin, high + margin


def _collect_splits(node: dict[str, Any], name: str, into: list[float]) -> None:
    if node.get("split") == name and "split_condition" in node:
        into.append(float(node["split_condition"]))
    for child in node.get("children", []):
        _collect_splits(child, name, into)


# --- task and classes ---------------------------------------------------------------------------


def _task_and_classes(loaded: Loaded) -> tuple[Task, list[str]]:
    model, flavor = loaded.model, loaded.flavor
    if flavor == "lightgbm":
        classes = getattr(model, "classes_", None)
        booster = getattr(model, "booster_", model)
        objective = str(booster.dump_model(num_iteration=0).get("objective", ""))
        if objective.startswith("binary"):
            return "classification", _labels(classes, 2)
        if objective.startswith(("multiclass", "softmax", "multiclassova")):
            return "classification", _labels(classes, _num_class(objective))
        if objective.startswith(("lambdarank", "rank_xendcg")):
            raise Refused(
                "schema", f"a LightGBM ranking model ({objective}) has no classes or values to serve"
            )
        return "regression", []
    if flavor == "xgboost":
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        config = json.loads(booster.save_config())["learner"]
        objective = config["objective"]["name"]
        classes = getattr(model, "classes_", None)
        if objective in ("binary:logistic", "binary:logitraw"):
            return "classification", _labels(classes, 2)
        if objective == "multi:softprob":
            return "classification", _labels(classes, int(config["learner_model_param"]["num_class"]))
        if objective == "multi:softmax":
            raise Refused(
                "schema",
                "the XGBoost model answers classes without probabilities (multi:softmax): retrain "
                "with multi:softprob, which answers the same labels",
            )
        if objective.startswith(("rank:", "survival:")):
            raise Refused("schema", f"an XGBoost {objective} model has no classes or values to serve")
        return "regression", []
    if flavor == "catboost":
        loss = str(model.get_all_params().get("loss_function", ""))
        if loss in ("Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll"):
            classes = getattr(model, "classes_", None)
            return "classification", _labels(classes, len(classes) if classes is not None else 2)
        return "regression", []
    if flavor == "sklearn":
        from sklearn.base import is_classifier, is_regressor

        if is_classifier(model):
            if not hasattr(model, "predict_proba"):
                raise Refused("schema", "the classifier answers no probabilities (no predict_proba)")
            return "classification", [str(c) for c in model.classes_]
        if is_regressor(model):
            return "regression", []
        raise Refused("schema", f"{type(model).__name__} is neither a classifier nor a regressor")
    return _onnx_task(model)


def _onnx_task(model: Any) -> tuple[Task, list[str]]:
    import onnx

    for node in model.graph.node:
        if node.op_type in ("ZipMap", "TreeEnsembleClassifier", "LinearClassifier", "SVMClassifier"):
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            labels = attributes.get("classlabels_strings") or attributes.get("classlabels_int64s")
            if labels:
                return "classification", [v.decode() if isinstance(v, bytes) else str(v) for v in labels]
    outputs = list(model.graph.output)
    probabilities = [o for o in outputs if "prob" in o.name.lower()]
    if probabilities:
        dims = probabilities[0].type.tensor_type.shape.dim
        width = dims[1].dim_value if len(dims) == 2 else 0
        return "classification", [str(i) for i in range(width)] if width else []
    return "regression", []


def _labels(classes: Any, count: int) -> list[str]:
    if classes is not None:
        return [str(c) for c in classes]
    return [str(i) for i in range(count)]


def _num_class(objective: str) -> int:
    for part in objective.split():
        if part.startswith("num_class:"):
            return int(part.partition(":")[2])
    return 0


def _class_labels(
    classes: list[str], sample: pd.DataFrame | None, target: str | None, notes: list[str]
) -> list[str]:
    """The model's classes; class indexes (0..k-1) named by the sample's labels when they are as many."""
    if not classes:
        if sample is None or target is None:
            raise Refused("schema", "the model does not say its classes: pass --sample with --target")
        return sorted(str(v) for v in sample[target].dropna().unique())
    if sample is None or target is None:
        return classes
    seen = sorted(str(v) for v in sample[target].dropna().unique())
    if set(seen) <= set(classes):
        return classes
    if classes == [str(i) for i in range(len(classes))] and len(seen) == len(classes):
        notes.append(f"classes 0..{len(classes) - 1} named by the sample's labels, sorted: {', '.join(seen)}")
        return seen
    raise Refused(
        "schema",
        f"the sample's {target} holds {', '.join(seen[:5])}, which are not the model's classes "
        f"({', '.join(classes[:5])})",
    )
