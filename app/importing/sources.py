"""Step 1 of an import: read what the user named into the original library's model object.

SOURCE is an MLflow model URI (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN/PATH`, a
local MLflow model folder) or a file: LightGBM (text), XGBoost (JSON or UBJSON), CatBoost (.cbm),
ONNX, or a scikit-learn estimator saved with joblib. A joblib file, and an MLflow model whose only
loader is its own Python code, run code as they load: `allow_code` (the command line, for files the
user trusts) lets them in; POST /models/import never does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.artifacts import ImportedFlavor, ModelSource
from app.core.model_formats import code_refused, is_pickle
from app.importing.errors import Refused

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
# MLflow flavors we read, in the order we prefer them when a model has several.
MLFLOW_FLAVORS: tuple[ImportedFlavor, ...] = ("onnx", "lightgbm", "xgboost", "catboost", "sklearn")
LIBRARY_OF: dict[ImportedFlavor, str] = {
    "lightgbm": "lightgbm",
    "xgboost": "xgboost-cpu",
    "catboost": "catboost",
    "sklearn": "scikit-learn",
    "onnx": "onnx",
}


@dataclass
class ColumnSpec:
    """An input column as MLflow's signature states it."""

    name: str
    categorical: bool
    required: bool


@dataclass
class Loaded:
    """The original model, as its own library reads it, and what is known of it so far."""

    model: Any  # lgb.Booster / LGBMModel, xgb.Booster / XGBModel, CatBoost, sklearn estimator, ModelProto
    flavor: ImportedFlavor
    source: ModelSource
    signature: list[ColumnSpec] | None = None  # MLflow's
    example: Any = None  # MLflow's input example (a DataFrame), if it has one
    name: str = ""  # a default for --name
    notes: list[str] = field(default_factory=list)


def read_source(source: str, allow_code: bool) -> Loaded:
    """The model SOURCE names; Refused('source', ...) when it cannot be read or may not be."""
    if source.startswith(MLFLOW_SCHEMES):
        return _read_mlflow(source, allow_code)
    path = Path(source)
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return _read_mlflow(str(path.resolve()), allow_code)
        raise Refused("source", f"{source} is a folder without an MLmodel file: not an MLflow model")
    if not path.is_file():
        raise Refused("source", f"{source}: no such file, and not an MLflow URI (models:/, runs:/)")
    return read_file(path, path.name, allow_code)


def read_file(path: Path, name: str, allow_code: bool) -> Loaded:
    """A model file; `name` is what the user called it (an upload's file name)."""
    payload = path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    flavor = sniff(payload, name)
    stem = Path(name).stem or "imported"

    def loaded(model: Any, flavor: ImportedFlavor) -> Loaded:
        return Loaded(model, flavor, _source(name, digest, flavor), name=stem)

    if flavor == "sklearn":
        if not allow_code:
            raise Refused("source", code_refused("A pickle (joblib) file", name))
        import joblib

        try:
            return loaded(joblib.load(path), "sklearn")
        except Exception as exc:
            raise Refused("source", f"{name} cannot be unpickled: {type(exc).__name__}: {exc}") from None
    try:
        if flavor == "lightgbm":
            import lightgbm

            return loaded(lightgbm.Booster(model_str=payload.decode()), "lightgbm")
        if flavor == "xgboost":
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(bytearray(payload))
            return loaded(booster, "xgboost")
        if flavor == "catboost":
            import catboost

            return loaded(catboost.CatBoost().load_model(blob=payload), "catboost")
        import onnx

        return loaded(onnx.load_from_string(payload), "onnx")
    except Refused:
        raise
    except Exception as exc:
        raise Refused(
            "source", f"{name} is not a {flavor} model its library reads: {type(exc).__name__}: {exc}"
        ) from None


def sniff(payload: bytes, name: str) -> ImportedFlavor:
    """The format of a model file, by its first bytes, else its name; Refused when neither tells."""
    head = payload[:4096]
    suffix = Path(name).suffix.lower()
    if is_pickle(head, name):
        return "sklearn"
    if head.startswith(b"CBM1"):
        return "catboost"
    if head.startswith(b"tree\n") or b"\ntree_sizes=" in head or head.startswith(b"tree\r\n"):
        return "lightgbm"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        if b'"learner"' in head or suffix == ".ubj":
            return "xgboost"
        if b'"tree_info"' in payload[: 1 << 20] or (b'"objective"' in head and b'"num_class"' in head):
            raise Refused(
                "source",
                f"{name} is LightGBM's JSON dump (Booster.dump_model), which LightGBM cannot read "
                "back: save the model with Booster.save_model (text) and import that",
            )
    if suffix == ".ubj" or (head[:1] == b"{" and suffix != ".json"):
        return "xgboost"
    if suffix == ".cbm":
        return "catboost"
    if suffix in (".txt", ".lgb", ".model") and b"=" in head:
        return "lightgbm"
    if suffix == ".onnx":
        return "onnx"
    raise Refused(
        "source",
        f"{name}: not a format this reads (LightGBM text, XGBoost JSON or UBJSON, CatBoost .cbm, "
        ".onnx, a joblib file, an MLflow model)",
    )


def _source(uri: str, digest: str, flavor: ImportedFlavor, **mlflow: str | None) -> ModelSource:
    libraries = {}
    for dist in {LIBRARY_OF[flavor], "onnx", "onnxruntime"}:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libraries[dist] = importlib.metadata.version(dist)
    return ModelSource(
        uri=uri, sha256=digest, flavor=flavor, libraries=dict(sorted(libraries.items())), **mlflow
    )


def _folder_digest(folder: Path) -> str:
    """One sha256 for an MLflow model folder: each file's path and digest, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _read_mlflow(uri: str, allow_code: bool) -> Loaded:
    """An MLflow model, read as MLflow reads it (MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        described = Model.load(str(folder))
    except (MlflowException, OSError) as exc:
        raise Refused("source", f"MLflow cannot read {uri}: {str(exc).splitlines()[0]}") from None
    flavors = described.flavors
    flavor = next((f for f in MLFLOW_FLAVORS if f in flavors), None)
    if flavor is None:
        what = "its python_function loader" if "python_function" in flavors else "none of its flavors"
        raise Refused(
            "source",
            f"{uri} has flavors {', '.join(sorted(flavors))}: {what} is not one this imports "
            "(sklearn, lightgbm, xgboost, catboost, onnx); a model behind custom Python code cannot "
            "be compiled",
        )
    if not allow_code and _runs_code(flavor, flavors[flavor]):
        raise Refused("source", code_refused(f"The MLflow model {uri}", uri))
    loaders = {
        "onnx": "mlflow.onnx",
        "lightgbm": "mlflow.lightgbm",
        "xgboost": "mlflow.xgboost",
        "catboost": "mlflow.catboost",
        "sklearn": "mlflow.sklearn",
    }
    import importlib

    try:
        model = importlib.import_module(loaders[flavor]).load_model(str(folder))
    except Exception as exc:
        raise Refused("source", f"MLflow cannot load {uri} ({flavor}): {type(exc).__name__}: {exc}") from None
    run_id, registered, version = described.run_id, *_registered(uri)
    source = _source(
        uri,
        _folder_digest(folder),
        flavor,
        mlflow_run_id=run_id,
        registered_model=registered,
        registered_version=version,
    )
    example = None
    try:
        example = described.load_input_example(str(folder))
    except Exception:  # an example is optional, and older ones may not read back
        example = None
    signature = None
    if described.signature is not None and described.signature.inputs is not None:
        signature = _columns(described.signature.inputs)
    name = registered or Path(uri.rstrip("/")).name or "imported"
    return Loaded(model, flavor, source, signature, example, name=name)


def _runs_code(flavor: str, conf: dict[str, Any]) -> bool:
    """Whether loading this flavor unpickles: scikit-learn always; the boosters when MLflow saved
    their scikit-learn wrapper by pickle rather than the library's own format."""
    if flavor == "sklearn":
        return True
    serialization = str(conf.get("serialization_format") or conf.get("data") or "")
    return serialization.endswith((".pkl", ".pickle", "cloudpickle", "pickle"))


def _registered(uri: str) -> tuple[str | None, str | None]:
    """The registered model's name and version a models:/ URI resolves to."""
    if not uri.startswith("models:/"):
        return None, None
    from mlflow import MlflowClient

    client = MlflowClient()
    reference = uri.removeprefix("models:/").strip("/")
    name, _, rest = reference.partition("/")
    try:
        if "@" in reference and not rest:
            name, _, alias = reference.partition("@")
            return name, str(client.get_model_version_by_alias(name, alias).version)
        return name, rest or None
    except Exception:  # the model was read: its registry entry is lineage, not a requirement
        return name, None


def _columns(schema: Any) -> list[ColumnSpec] | None:
    """MLflow's column schema; None for a tensor signature (no names)."""
    from mlflow.types.schema import ColSpec

    columns = []
    for spec in schema.inputs:
        if not isinstance(spec, ColSpec) or spec.name is None:
            return None
        kind = str(getattr(spec.type, "name", spec.type)).lower()
        columns.append(
            ColumnSpec(spec.name, kind in ("string", "binary"), bool(getattr(spec, "required", True)))
        )
    return columns
