"""The train -> serve contract: file names and the typed metadata both sides read.

The pipeline writes these files; the API reads them. Neither side imports the other,
so this module is the only place where their formats are defined.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MODEL_FILE = "model.joblib"
# The same model as ONNX, when it converted (app/pipeline/onnx_export.py): what serving runs.
ONNX_FILE = "model.onnx"
METADATA_FILE = "model.json"
REFERENCE_PROFILE_FILE = "reference_profile.json"
CANDIDATES_DIR = "candidates"

Task = Literal["classification", "regression"]
# A gap in a categorical column, in training and serving alike: ONNX string tensors hold no NaN.
MISSING_CATEGORY = ""
FeatureType = Literal["numeric", "categorical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One input column, in training column order."""

    name: str
    type: FeatureType
    # numeric: observed training range; categorical: the categories seen in training.
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    missing_fraction: float = 0.0


class NumericProfile(_Strict):
    type: Literal["numeric"] = "numeric"
    count: int
    missing_fraction: float
    min: float
    max: float
    mean: float
    std: float
    # Inner cut points: bins are (-inf, e0], (e0, e1], ..., (e_last, +inf).
    bin_edges: list[float]
    bin_proportions: list[float]


class CategoricalProfile(_Strict):
    type: Literal["categorical"] = "categorical"
    count: int
    missing_fraction: float
    # Category -> share of non-missing training rows.
    proportions: dict[str, float]


FeatureProfile = Annotated[NumericProfile | CategoricalProfile, Field(discriminator="type")]


class TargetProfile(_Strict):
    name: str
    task: Task
    # classification: class -> share of rows; regression: summary statistics.
    class_balance: dict[str, float] | None = None
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None


class ReferenceProfile(_Strict):
    """What the training data looked like: serving validates and measures drift against it."""

    rows: int
    features: dict[str, FeatureProfile]
    target: TargetProfile


class ModelFile(_Strict):
    """A file of the model folder, and the checksum serving verifies before reading it."""

    path: str  # relative to the model directory
    sha256: str


class CandidateInfo(_Strict):
    name: str
    path: str  # relative to the model directory
    sha256: str
    onnx: ModelFile | None = None
    # Why there is no ONNX file (then serving unpickles the pipeline).
    onnx_error: str | None = None
    # Numpy arrays of an older train (model.npz); read by nothing since ONNX serves.
    compiled: ModelFile | None = None
    mlflow_run_id: str | None = None
    cv_score: float
    metrics: dict[str, float]


ImportedFlavor = Literal["lightgbm", "xgboost", "catboost", "sklearn", "onnx"]


class ModelSource(_Strict):
    """Where a model trained elsewhere came from (`models import`); the pipeline's own have none."""

    uri: str  # the MLflow model URI as given, or the file's name
    sha256: str  # of the file, or of the MLflow model's folder (its files' digests, in path order)
    flavor: ImportedFlavor
    libraries: dict[str, str]  # the libraries that read and compiled it, with their versions
    mlflow_run_id: str | None = None
    registered_model: str | None = None  # the registry entry it was read from
    registered_version: str | None = None


class Parity(_Strict):
    """How the compiled ONNX graph answers against the original library, on real rows."""

    rows: int
    rows_from: Literal["sample", "input_example", "schema"]  # the --sample, MLflow's example, drawn
    labels_differing: int  # classification: rows whose label differs (0, or the import is refused)
    max_difference: float  # the largest |probability or value| difference
    tolerance: float  # what it had to be within (1e-5 unless --tolerance widened it)


class ModelMetadata(_Strict):
    """models/model.json: everything serving needs to know about the model folder.

    The pipeline's own models carry model.joblib (sha256) beside model.onnx; a model imported from
    elsewhere is model.onnx alone (sha256 None), with its `source` and `parity`."""

    version: str
    name: str  # the champion's candidate name
    task: Task
    target: str
    features: list[Feature]
    classes: list[str] = []
    metric: str
    metrics: dict[str, float]
    params: dict[str, Any]
    trained_at: str
    git_commit: str
    data_md5: str
    sha256: str | None  # model.joblib's; None: no pickled pipeline (an imported model)
    # model.onnx; None when the champion did not convert (then serving unpickles model.joblib).
    onnx: ModelFile | None = None  # why not: the champion's CandidateInfo.onnx_error
    compiled: ModelFile | None = None  # an older train's model.npz, unused
    mlflow_run_id: str | None = None
    mlflow_experiment: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    python_version: str
    sklearn_version: str
    candidates: list[CandidateInfo] = []
    source: ModelSource | None = None  # imported: where from
    parity: Parity | None = None  # imported: the compiled graph against the original library

    @classmethod
    def read(cls, model_dir: Path) -> ModelMetadata:
        return cls.model_validate_json((model_dir / METADATA_FILE).read_text())

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so a reader never sees half a file (rename is atomic on one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        payload.model_dump_json(indent=2) if isinstance(payload, BaseModel) else json.dumps(payload, indent=2)
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def matrix_dtype(features: list[Feature]) -> type:
    """The array dtype the fitted pipelines expect: float when all features are numeric.

    Pipelines are fitted on column positions, not names, so serving can pass a plain
    numpy array instead of building a DataFrame per request.
    """
    return object if any(f.type == "categorical" for f in features) else np.float64
