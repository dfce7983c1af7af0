"""`python -m app.cli models publish`: the pipeline's latest output (MODEL_DIR) into the model store.

With --serve it becomes the champion of every replica, through the same promotion gate a retraining
job passes: the serving champion is scored on the pipeline's own test split (data/processed), and
the new model must be within PROMOTION_TOLERANCE of it. --force skips the gate. MLflow's `champion`
alias follows whatever serves afterwards.

This is the one wiring module that imports the pipeline (the gate scores with scikit-learn and
pandas): an operator's command, never on the request path.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.adapters.mlflow_alias import update_champion_alias
from app.adapters.model_store import ModelStore
from app.core.artifacts import ModelMetadata
from app.core.config import Settings
from app.core.loading import ModelLoadError
from app.core.messages import GateOutcome
from app.core.serving_pointer import ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion, VersionRecord, now
from app.db.bootstrap import bootstrap
from app.db.pointer import DatabasePointer
from app.db.session import Database
from app.serving.champion_alias import record_alias
from app.serving.predictor import Predictor


class PublishError(Exception):
    """Nothing to publish, a model that does not load, or a store that does not answer: one line."""


def _gate(settings: Settings, challenger: ModelMetadata, store: ModelStore, champion: str) -> GateOutcome:
    from app.pipeline import layout
    from app.pipeline.retrain import gate

    if challenger.metric not in challenger.metrics:
        raise PublishError(
            f"{settings.model_dir} has no test {challenger.metric} to pass the gate with: run `dvc repro`"
        )
    try:
        champion_dir = store.fetch(champion)
    except (UnknownVersion, ModelLoadError) as exc:
        raise PublishError(f"the serving version {champion} cannot be compared: {exc}") from None
    return gate(challenger, champion_dir, layout.PROJECT, settings.promotion_tolerance)


def publish_model_dir(settings: Settings, serve: bool, force: bool) -> Iterator[str]:
    """Publish, and with `serve` point every replica at it; yields what it did, line by line."""
    model_dir = settings.model_dir
    try:
        # Loading it is the check: checksums, the ONNX graph's probe answers, a sample prediction.
        metadata = Predictor.load(model_dir, settings.max_batch_rows, None).metadata
    except ModelLoadError as exc:
        raise PublishError(f"{model_dir} holds no model that loads ({exc}): run `dvc repro` first") from None
    store = ModelStore.from_url(settings.model_store_url, settings.model_cache_dir)
    database = Database(settings.database_url)
    try:
        yield from _publish(settings, metadata, store, database, serve, force)
    except (StoreUnavailable, CacheFull) as exc:
        raise PublishError(str(exc)) from None
    finally:
        database.dispose()


def _publish(
    settings: Settings,
    metadata: ModelMetadata,
    store: ModelStore,
    database: Database,
    serve: bool,
    force: bool,
) -> Iterator[str]:
    version = metadata.version
    stored = store.exists(version)  # versions are never overwritten: publishing again changes nothing
    published = f"{'already in' if stored else 'published to'} {store.url}: {version}"
    if not serve:
        store.publish(settings.model_dir, VersionRecord(origin="pipeline", recorded_at=now()))
        yield published
        return
    bootstrap(database, settings)  # the pointer's table, on a database nothing has started on yet
    pointer = DatabasePointer(database.session)
    current = pointer.get()
    outcome: GateOutcome | None = None
    if current is not None and current.version != version and not force:
        outcome = _gate(settings, metadata, store, current.version)
    passed = outcome is None or outcome.passed
    record = VersionRecord(
        origin="pipeline", recorded_at=now(), status="accepted" if passed else "rejected", gate=outcome
    )
    store.publish(settings.model_dir, record)
    yield published
    if not passed and current is not None and outcome is not None:
        yield f"kept as a rejected challenger: {outcome.reason}; still serving {current.version}"
        # dvc repro's train moved MLflow's alias to the new model: back to what serves.
        alias = update_champion_alias(store.metadata(current.version))
        yield f"MLflow champion alias: {alias.status}{f' ({alias.reason})' if alias.reason else ''}"
        return
    # What replicas will load, verified as they will: downloaded, checksums, loaded.
    try:
        Predictor.load(store.fetch(version), settings.max_batch_rows, None)
    except ModelLoadError as exc:
        raise PublishError(f"the published {version} does not load from {store.url}: {exc}") from None
    how = "--force, gate skipped" if force else (outcome.reason if outcome else "no other version serving")
    pointer.set(
        ServingPointer(
            version=version,
            since=now(),
            reason=f"published by models publish ({how})",
            model_dir_version=version,
        )
    )
    yield f"serving {version} on every replica within WATCH_SECONDS ({how})"
    alias = update_champion_alias(metadata)
    record_alias(pointer, version, alias)
    yield f"MLflow champion alias: {alias.status}{f' ({alias.reason})' if alias.reason else ''}"
