"""Stage 2: fit every candidate, track each as an MLflow run (tracking.py), crown the best one
champion, and write the model folder serving reads.

    python -m app.pipeline.train [--params params.yaml]

The champion is chosen by cross-validation on the training split (the test split stays
unseen until evaluation); `train.champion` in params can force one, e.g. for benchmarks.
"""

from __future__ import annotations

import platform
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline

from app.core.artifacts import (
    CANDIDATES_DIR,
    METADATA_FILE,
    MISSING_CATEGORY,
    MODEL_FILE,
    ONNX_FILE,
    REFERENCE_PROFILE_FILE,
    CandidateInfo,
    Feature,
    ModelFile,
    ModelMetadata,
    Task,
    matrix_dtype,
    sha256_of,
    write_json_atomic,
)
from app.pipeline import layout, onnx_export, tracking
from app.pipeline.candidates import Fitted, build_pipeline
from app.pipeline.dataset import DatasetSchema, read_split
from app.pipeline.errors import PipelineError
from app.pipeline.params import Params
from app.pipeline.scoring import ALL_METRICS, classification_metrics, regression_metrics, resolve_metric
from app.pipeline.stage import run_stage
from app.pipeline.tracking import CHAMPION_ALIAS


def load_schema(processed: Path = layout.PROCESSED_DIR) -> DatasetSchema:
    path = processed / layout.SCHEMA_FILE
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the prepare stage first")
    return DatasetSchema.model_validate_json(path.read_text())


def feature_matrix(frame: pd.DataFrame, features: list[Feature]) -> np.ndarray:
    """The raw feature columns as the pipelines take them: a categorical gap is MISSING_CATEGORY."""
    columns = frame[[f.name for f in features]].copy()
    for feature in features:
        if feature.type == "categorical":
            columns[feature.name] = columns[feature.name].astype(object).fillna(MISSING_CATEGORY)
    return columns.to_numpy(dtype=matrix_dtype(features))


def split_xy(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[np.ndarray, np.ndarray]:
    return feature_matrix(frame, schema.features), frame[schema.target].to_numpy()


def score_split(pipeline: Pipeline, x: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> dict[str, float]:
    predicted = pipeline.predict(x)
    if schema.task == "regression":
        return regression_metrics(y, predicted)
    proba = pipeline.predict_proba(x) if hasattr(pipeline, "predict_proba") else None
    return classification_metrics(y, predicted, proba, list(pipeline.classes_))


def _folds(params: Params, schema: DatasetSchema, y: np.ndarray) -> StratifiedKFold | KFold:
    if schema.task == "classification":
        smallest = int(pd.Series(y).value_counts().min())
        n_splits = max(2, min(params.train.cv_folds, smallest))
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=params.seed)
    return KFold(n_splits=min(params.train.cv_folds, len(y)), shuffle=True, random_state=params.seed)


def fit_candidates(
    params: Params, schema: DatasetSchema, metric: str, processed: Path = layout.PROCESSED_DIR
) -> list[Fitted]:
    train = read_split(processed / layout.TRAIN_FILE, schema.features, schema.target, schema.task)
    test = read_split(processed / layout.TEST_FILE, schema.features, schema.target, schema.task)
    x_train, y_train = split_xy(train, schema)
    x_test, y_test = split_xy(test, schema)
    folds = _folds(params, schema, y_train)
    sign = 1 if ALL_METRICS[metric].greater_is_better else -1

    # Build every candidate first: a bad name or hyperparameter fails before any fitting.
    candidates = params.train.candidates_for(schema.task)
    key = params.train.candidates_key(schema.task)  # where they are in params.yaml
    pipelines = {}
    for name, hyperparameters in candidates.items():
        try:
            pipelines[name] = build_pipeline(
                name, schema.task, hyperparameters, schema.features, params.seed, where=key
            )
        except (ValueError, TypeError) as exc:
            raise PipelineError(str(exc)) from None
    if params.train.champion is not None and params.train.champion not in pipelines:
        raise PipelineError(
            f"train.champion: '{params.train.champion}' is not one of {key} (the data does {schema.task})"
        )

    fitted = []
    for name, pipeline in pipelines.items():
        print(f"train: fitting {name} ({folds.get_n_splits()}-fold CV on {len(y_train)} rows)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            try:
                scores = cross_val_score(
                    pipeline, x_train, y_train, cv=folds, scoring=ALL_METRICS[metric].scorer
                )
                pipeline.fit(x_train, y_train)
            except ValueError as exc:
                raise PipelineError(f"{key}.{name}: {exc}".replace("\n", " ")) from None
        fitted.append(
            Fitted(
                name=name,
                pipeline=pipeline,
                hyperparameters=candidates[name],
                cv_score=round(float(sign * np.mean(scores)), 6),
                metrics=score_split(pipeline, x_test, y_test, schema),
            )
        )
    return fitted


def choose_champion(fitted: list[Fitted], metric: str, forced: str | None) -> Fitted:
    if forced is not None:
        for candidate in fitted:
            if candidate.name == forced:
                return candidate
        raise PipelineError(f"train.champion: '{forced}' is not one of train.candidates")
    better = ALL_METRICS[metric].greater_is_better
    # Stable: on a tie the candidate listed first in params wins.
    return sorted(fitted, key=lambda c: -c.cv_score if better else c.cv_score)[0]


def print_table(fitted: list[Fitted], champion: Fitted, metric: str) -> None:
    columns = sorted({k for c in fitted for k in c.metrics})
    header = ["candidate", f"cv_{metric}", *[f"test_{k}" for k in columns]]
    rows = [
        [
            ("* " if c is champion else "  ") + c.name,
            f"{c.cv_score:.4f}",
            *[f"{c.metrics.get(k, float('nan')):.4f}" for k in columns],
        ]
        for c in fitted
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("train: " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(f"train: * champion: {champion.name} (best cv_{metric})")


def write_onnx(
    name: str, pipeline: Pipeline, task: Task, features: list[Feature], out: Path, path: Path
) -> tuple[ModelFile | None, str | None]:
    """The pipeline as ONNX at out/path, written only if onnxruntime gives the pipeline's answers
    on probe rows; else no file and the reason, which train prints (that candidate then serves
    through its pickled pipeline)."""
    try:
        payload = onnx_export.export(pipeline, task, features)
    except onnx_export.ExportError as exc:
        print(f"train: {name}: no ONNX file, it will serve through its pipeline: {exc}")
        return None, str(exc)
    (out / path).write_bytes(payload)
    return ModelFile(path=str(path), sha256=sha256_of(out / path)), None


@dataclass(frozen=True)
class FolderFacts:
    """What model.json says about a model besides its files: one training run's facts."""

    version: str
    task: Task
    target: str
    features: list[Feature]
    classes: list[str]
    metric: str
    params: dict[str, Any]
    trained_at: str
    git_commit: str
    data_md5: str
    mlflow_experiment: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None


def write_model_folder(
    out: Path, fitted: list[Fitted], champion: Fitted, facts: FolderFacts, profile: Path
) -> ModelMetadata:
    """The model folder serving reads, written into `out` (an empty folder): every candidate's
    pipeline and ONNX file, the champion's beside them as model.joblib and model.onnx, the reference
    profile, and model.json with every checksum. train writes it; the test suite's tiny models too."""
    (out / CANDIDATES_DIR).mkdir(exist_ok=True)
    infos = []
    for candidate in fitted:
        path = Path(CANDIDATES_DIR) / f"{candidate.name}.joblib"
        joblib.dump(candidate.pipeline, out / path)
        onnx_file, onnx_error = write_onnx(
            candidate.name, candidate.pipeline, facts.task, facts.features, out, path.with_suffix(".onnx")
        )
        infos.append(
            CandidateInfo(
                name=candidate.name,
                path=str(path),
                sha256=sha256_of(out / path),
                onnx=onnx_file,
                onnx_error=onnx_error,
                mlflow_run_id=candidate.run_id,
                cv_score=candidate.cv_score,
                metrics=candidate.metrics,
            )
        )
    shutil.copyfile(out / CANDIDATES_DIR / f"{champion.name}.joblib", out / MODEL_FILE)
    champion_info = next(info for info in infos if info.name == champion.name)
    champion_onnx = None
    if champion_info.onnx is not None:
        shutil.copyfile(out / champion_info.onnx.path, out / ONNX_FILE)
        champion_onnx = ModelFile(path=ONNX_FILE, sha256=champion_info.onnx.sha256)
    shutil.copyfile(profile, out / REFERENCE_PROFILE_FILE)
    metadata = ModelMetadata(
        version=facts.version,
        name=champion.name,
        task=facts.task,
        target=facts.target,
        features=facts.features,
        classes=facts.classes,
        metric=facts.metric,
        metrics=champion.metrics,
        params=facts.params,
        trained_at=facts.trained_at,
        git_commit=facts.git_commit,
        data_md5=facts.data_md5,
        sha256=sha256_of(out / MODEL_FILE),
        onnx=champion_onnx,
        mlflow_run_id=champion.run_id,
        mlflow_experiment=facts.mlflow_experiment,
        registered_model=facts.registered_model,
        registered_version=facts.registered_version,
        python_version=platform.python_version(),
        sklearn_version=sklearn.__version__,
        candidates=infos,
    )
    write_json_atomic(out / METADATA_FILE, metadata)
    return metadata


def train(params: Params, ws: layout.Workspace = layout.PROJECT, set_alias: bool = True) -> ModelMetadata:
    """Fit, track and write ws.models_dir. A retraining job passes set_alias=False: its model
    takes the `champion` alias only if it passes the promotion gate."""
    schema = load_schema(ws.processed_dir)
    try:
        metric = resolve_metric(params.train.metric, schema.task)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    fitted = fit_candidates(params, schema, metric, ws.processed_dir)
    champion = choose_champion(fitted, metric, params.train.champion)
    print_table(fitted, champion, metric)

    commit = tracking.git_commit()
    trained_at = datetime.now(UTC)
    training_rows = read_split(
        ws.processed_dir / layout.TRAIN_FILE, schema.features, schema.target, schema.task
    )
    example = training_rows[[f.name for f in schema.features]].head(5)
    experiment_id = tracking.log_candidates(
        fitted, params, schema, metric, commit, example, feature_matrix(example, schema.features)
    )
    registered_version = tracking.register(champion, params.train.registered_model, alias=set_alias)

    folder = FolderFacts(
        version=trained_at.strftime("%Y-%m-%dT%H-%M-%S"),
        task=schema.task,
        target=schema.target,
        features=schema.features,
        classes=schema.classes,
        metric=metric,
        params=params.model_dump(mode="json"),
        trained_at=trained_at.isoformat(timespec="seconds"),
        git_commit=commit,
        data_md5=schema.data_md5,
        mlflow_experiment=experiment_id,
        registered_model=params.train.registered_model,
        registered_version=registered_version,
    )
    with layout.staged_output(ws.models_dir) as out:
        metadata = write_model_folder(
            out, fitted, champion, folder, ws.processed_dir / layout.TRAINING_PROFILE_FILE
        )

    print(
        f"train: model {ws.models_dir / MODEL_FILE} "
        f"(version {metadata.version}, sha256 {(metadata.sha256 or '')[:12]}...)"
    )
    print(
        f"train: MLflow {tracking.tracking_uri()}: experiment '{params.train.experiment}', "
        f"registered '{params.train.registered_model}' v{registered_version}"
        + (f" @{CHAMPION_ALIAS}" if set_alias else " (alias unchanged until promoted)")
    )
    return metadata


def main() -> None:
    run_stage("train", __doc__ or "", train)


if __name__ == "__main__":
    main()
