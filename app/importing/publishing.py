"""Step 5 of an import: the promotion gate, the MLflow registry, the model store, and --serve.

As `models publish` does it (app.publish): with --serve, the serving version is scored on the same
rows (the sample, which must then have its --target, unless --force) and the import must be within
PROMOTION_TOLERANCE of it; it is published either way, as accepted or as a rejected challenger, and
served only when it passed. The compiled graph is registered in MLflow's registry (params.yaml's
train.registered_model) in a run that records where it came from; MLflow not answering is said,
never fatal: the model store, not the registry, is what replicas serve from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from app.adapters.mlflow_alias import update_champion_alias
from app.adapters.model_store import ModelStore
from app.adapters.onnx_model import OnnxModel
from app.core.artifacts import METADATA_FILE, ModelMetadata, write_json_atomic
from app.core.config import Settings
from app.core.loading import ModelLoadError
from app.core.messages import GateOutcome
from app.core.serving_pointer import ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion, VersionRecord, now
from app.db.bootstrap import bootstrap
from app.db.pointer import DatabasePointer
from app.db.session import Database
from app.importing.errors import Refused
from app.importing.parity import matrix_of
from app.importing.request import ImportRequest
from app.importing.schema import ModelSchema
from app.importing.scoring import score_answers
from app.serving.champion_alias import record_alias
from app.serving.predictor import Predictor

DEFAULT_EXPERIMENT = "predictor"
DEFAULT_REGISTERED_MODEL = "predictor"


@dataclass(frozen=True)
class Published:
    metadata: ModelMetadata
    gate: GateOutcome | None
    served: bool


def publish_import(
    settings: Settings,
    folder: Path,
    compiled: OnnxModel,
    schema: ModelSchema,
    sample: pd.DataFrame | None,
    request: ImportRequest,
    say: Callable[[str], None],
) -> Published:
    serve, force, target = request.serve, request.force, request.target
    metadata = ModelMetadata.read(folder)
    store = ModelStore.from_url(settings.model_store_url, settings.model_cache_dir)
    database = Database(settings.database_url)
    try:
        bootstrap(database, settings)  # the pointer's table, on a database nothing has started on yet
        pointer = DatabasePointer(database.session)
        current = pointer.get() if serve else None
        outcome: GateOutcome | None = None
        if current is not None and current.version != metadata.version and not force:
            if sample is None or target is None:
                raise Refused(
                    "gate",
                    f"version {current.version} is serving: --serve compares the import with it on the "
                    "sample's target (pass --sample and --target), or skips that with --force",
                )
            outcome = _gate(settings, store, current.version, metadata, compiled, schema, sample, target)
            say(f"gate: {outcome.reason}")
        metadata = _register(settings, folder, metadata, say)
        passed = outcome is None or outcome.passed
        record = VersionRecord(
            origin="import", recorded_at=now(), status="accepted" if passed else "rejected", gate=outcome
        )
        store.publish(folder, record)
        say(f"published to {store.url}: {metadata.version}")
        if not serve:
            return Published(metadata, outcome, False)
        if not passed and current is not None:
            say(f"kept as a rejected challenger; still serving {current.version} (--force serves it anyway)")
            return Published(metadata, outcome, False)
        try:  # what replicas will load, verified as they will
            Predictor.load(store.fetch(metadata.version), settings.max_batch_rows, None)
        except ModelLoadError as exc:
            raise Refused(
                "publish", f"the published {metadata.version} does not load from {store.url}: {exc}"
            ) from None
        how = (
            "--force, gate skipped" if force else (outcome.reason if outcome else "no other version serving")
        )
        pointer.set(
            ServingPointer(version=metadata.version, since=now(), reason=f"imported by models import ({how})")
        )
        say(f"serving {metadata.version} on every replica within WATCH_SECONDS ({how})")
        alias = update_champion_alias(metadata)
        record_alias(pointer, metadata.version, alias)
        say(f"MLflow champion alias: {alias.status}{f' ({alias.reason})' if alias.reason else ''}")
        return Published(metadata, outcome, True)
    except (StoreUnavailable, CacheFull) as exc:
        raise Refused("publish", str(exc)) from None
    finally:
        database.dispose()


def _gate(
    settings: Settings,
    store: ModelStore,
    version: str,
    metadata: ModelMetadata,
    compiled: OnnxModel,
    schema: ModelSchema,
    sample: pd.DataFrame,
    target: str,
) -> GateOutcome:
    """The import and the serving version, scored on the same labelled sample rows."""
    from app.pipeline.gate import not_comparable, promotion_gate
    from app.pipeline.scoring import ALL_METRICS

    metric = metadata.metric
    score = metadata.metrics[metric]
    higher = ALL_METRICS[metric].greater_is_better
    try:
        champion = Predictor.load(store.fetch(version), settings.max_batch_rows, None)
    except (UnknownVersion, ModelLoadError) as exc:
        return not_comparable(metric, score, settings.promotion_tolerance, version, str(exc))
    theirs = [(f.name, f.type) for f in champion.metadata.features]
    ours = [(f.name, f.type) for f in schema.features]
    if champion.metadata.task != schema.task or theirs != ours:
        why = f"it takes {', '.join(n for n, _ in theirs)} ({champion.metadata.task})"
        return not_comparable(metric, score, settings.promotion_tolerance, version, why)
    labelled = sample[sample[target].notna()]
    matrix = matrix_of(labelled, schema)
    if champion.schema.dtype is not object and matrix.dtype == object:
        matrix = matrix.astype(np.float64)
    with np.errstate(all="ignore"):
        answers = champion.infer(matrix)
    found = answers.probabilities if schema.task == "classification" else answers.values
    incumbent = score_answers(schema, np.asarray(found, dtype=np.float64), labelled[target]).get(metric)
    if incumbent is None:
        return not_comparable(metric, score, settings.promotion_tolerance, version, f"no {metric} for it")
    return promotion_gate(
        metric, score, incumbent, settings.promotion_tolerance, higher, champion_version=version
    )


def _register(
    settings: Settings, folder: Path, metadata: ModelMetadata, say: Callable[[str], None]
) -> ModelMetadata:
    """The compiled graph as a version of the registered model, its run tagged with the source;
    model.json then names both."""
    experiment, registered = _tracking_names(settings)
    source = metadata.source
    try:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        import onnx
        from mlflow import MlflowClient

        from app.pipeline import tracking

        tracking.configure(experiment)
        with mlflow.start_run(run_name=f"import {metadata.name}") as run:
            if source is not None:
                mlflow.set_tags(
                    {
                        "source.uri": source.uri,
                        "source.sha256": source.sha256,
                        "source.flavor": source.flavor,
                        "source.mlflow_run_id": source.mlflow_run_id or "",
                        "source.registered_model": source.registered_model or "",
                        "source.registered_version": source.registered_version or "",
                        "imported_version": metadata.version,
                    }
                )
                mlflow.log_params({f"library.{k}": v for k, v in source.libraries.items()})
            if metadata.parity is not None:
                mlflow.log_metric("parity_max_difference", metadata.parity.max_difference)
                mlflow.log_metric("parity_rows", metadata.parity.rows)
            if metadata.metrics:
                mlflow.log_metrics({f"sample_{k}": v for k, v in metadata.metrics.items()})
            graph = onnx.load(str(folder / "model.onnx"))
            info = mlflow.onnx.log_model(graph, name="model", registered_model_name=registered)
        version = str(info.registered_model_version or "")
        client = MlflowClient()
        if version and source is not None:
            client.set_model_version_tag(registered, version, "source", f"{source.flavor}: {source.uri}")
            client.set_model_version_tag(registered, version, "imported_version", metadata.version)
    except Exception as exc:  # lineage is a record, not a requirement for serving
        say(f"mlflow: not registered ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return metadata
    updated = metadata.model_copy(
        update={
            "mlflow_run_id": run.info.run_id,
            "mlflow_experiment": run.info.experiment_id,
            "registered_model": registered,
            "registered_version": version or None,
        }
    )
    write_json_atomic(folder / METADATA_FILE, updated)
    say(f"mlflow: registered as {registered} v{version} (run {run.info.run_id[:12]})")
    return updated


def _tracking_names(settings: Settings) -> tuple[str, str]:
    """params.yaml's experiment and registered model, when the project has one."""
    try:
        from app.pipeline.params import Params

        train = Params.load(settings.train_params).train
        return train.experiment, train.registered_model
    except Exception:  # outside the project: the defaults train uses
        return DEFAULT_EXPERIMENT, DEFAULT_REGISTERED_MODEL
