from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AdminDep, ChampionAliasDep, ClaimsDep, PredictorDep, ServingDep
from app.api.errors import DATABASE_UNAVAILABLE, ErrorDetail
from app.core.artifacts import ImportedFlavor, ModelMetadata, ModelSource
from app.core.loading import ModelLoadError
from app.core.messages import AliasOutcome, GateOutcome
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion
from app.db.models import User
from app.observability.drift import no_reference_profile
from app.observability.metrics import MODEL_RELOADS
from app.serving.predictor import Predictor
from app.serving.state import ServingState

router = APIRouter(tags=["model"])
log = logging.getLogger("predictor")


class CanaryShare(BaseModel):
    """The canary answering a share of the requests beside the champion (GET /model/canary for more)."""

    version: str
    percent: int
    step: int  # the index in steps it is at
    steps: list[int]


def canary_share(serving: ServingState) -> CanaryShare | None:
    """This replica's canary, as it answers now."""
    running = serving.canary
    if running is None:
        return None
    plan = running.plan
    return CanaryShare(version=plan.version, percent=plan.percent, step=plan.step, steps=list(plan.steps))


class ModelInfo(ModelMetadata):
    """model.json as served, and how: when it was loaded, what runs it, whether drift is measured."""

    loaded_at: str
    # onnx: model.onnx in onnxruntime; pipeline: the unpickled model.joblib.
    served_by: Literal["onnx", "pipeline"]
    # "on", or "off: " and why: drift switched off, or no reference profile (an imported version
    # without a labelled sample has none).
    drift: str
    # A canary answering a share of the requests instead of this model, if any.
    canary: CanaryShare | None = None


@router.get("/model-info")
def model_info(_: ClaimsDep, predictor: PredictorDep, serving: ServingDep) -> ModelInfo:
    """model.json as served: version, metrics, feature schema, classes, candidates, where an imported
    model came from and its parity, what serves it, whether drift is measured."""
    return ModelInfo(
        **dict(predictor.metadata),
        loaded_at=predictor.loaded_at,
        served_by=predictor.model.source,
        drift=_drift(predictor, serving),
        canary=canary_share(serving),
    )


def _drift(predictor: Predictor, serving: ServingState) -> str:
    if predictor.drift is not None:
        return "on"
    if serving.model.drift is None:
        return "off: DRIFT_ENABLED or METRICS_ENABLED is false"
    return f"off: {no_reference_profile(predictor.version)}"


_STORE_DOWN = {"model": ErrorDetail, "description": "The model store does not answer: nothing changed"}
_CACHE_FULL = {
    "model": ErrorDetail,
    "description": "The version does not fit in this replica's model cache: the current one keeps serving",
}


def _store_unavailable(exc: StoreUnavailable) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model store unavailable: {exc}")


@contextmanager
def loading_beside_the_champion(
    version: str, role: str, refused: type[Exception] | tuple[type[Exception], ...]
) -> Iterator[None]:
    """A stored version loaded to run beside the champion (a shadow, a canary): why it could not be,
    as the HTTP answer (404, 409 for `refused` or a broken model, 503, 507); nothing changed then."""
    try:
        yield
    except UnknownVersion:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown model version {version!r}") from None
    except StoreUnavailable as exc:
        raise _store_unavailable(exc) from None
    except CacheFull as exc:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, f"{role} refused: {exc}") from None
    except ModelLoadError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{role} refused: {exc}") from None
    except refused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{role} refused: {exc}") from None


def _swap(action: str, admin: User, load: Callable[[], Predictor]) -> Predictor:
    """Load-then-swap, counted and logged; a model that fails verification answers 409."""
    try:
        new = load()
    except StoreUnavailable as exc:
        MODEL_RELOADS.labels(result="refused").inc()
        log.warning("model %s refused: %s", action, exc, extra={"fields": {"user": admin.username}})
        raise _store_unavailable(exc) from None
    except CacheFull as exc:
        MODEL_RELOADS.labels(result="refused").inc()
        log.warning("model %s refused: %s", action, exc, extra={"fields": {"user": admin.username}})
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, f"{action} refused: {exc}") from None
    except ModelLoadError as exc:
        MODEL_RELOADS.labels(result="refused").inc()
        log.warning("model %s refused: %s", action, exc, extra={"fields": {"user": admin.username}})
        raise HTTPException(status.HTTP_409_CONFLICT, f"{action} refused: {exc}") from None
    MODEL_RELOADS.labels(result="success").inc()
    log.info(
        f"model {action}: now serving {new.version}",
        extra={"fields": {"user": admin.username, "version": new.version, "sha256": new.metadata.sha256}},
    )
    return new


class ReloadResponse(BaseModel):
    previous_version: str | None
    model_version: str


class RollbackResponse(ReloadResponse):
    # MLflow's champion alias: pending (moved after the answer), or skipped (no registry version)
    mlflow: AliasOutcome


_REFUSED = {
    "model": ErrorDetail,
    "description": "Checksum mismatch or broken model: the current one keeps serving",
}


@router.post("/model/reload", responses={409: _REFUSED, 503: _STORE_DOWN})
def reload_model(admin: AdminDep, serving: ServingDep) -> ReloadResponse:
    """Load this replica's model directory (MODEL_DIR) again, publish it and serve it on every replica;
    the old model serves until the new one is verified."""
    previous = serving.current
    new = _swap("reload", admin, serving.reload)
    return ReloadResponse(previous_version=previous.version if previous else None, model_version=new.version)


class ImportedFrom(BaseModel):
    flavor: ImportedFlavor  # the library that read it
    uri: str  # the file's name, or the MLflow model URI


class ModelVersion(BaseModel):
    version: str
    name: str
    task: str
    metric: str
    metrics: dict[str, float]
    trained_at: str
    serving: bool
    shadow: bool = False  # scoring the same traffic in the background (POST /model/shadow)
    canary: bool = False  # answering a share of the requests (POST /model/canary)
    # accepted, or rejected: a challenger that failed the promotion gate
    status: str
    origin: str | None = None  # pipeline, retrain or import
    source: ImportedFrom | None = None  # import: where from; None for the pipeline's own
    # import: the largest difference between the compiled graph and the original library
    parity_max_difference: float | None = None
    job_id: str | None = None
    gate: GateOutcome | None = None
    mlflow_run_id: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    # How moving MLflow's champion alias to this version went, on its last swap (pending meanwhile).
    mlflow_alias: AliasOutcome | None = None
    candidates: list[str]


class VersionsResponse(BaseModel):
    serving: str | None
    shadow: str | None = None  # the shadow challenger this replica runs, if any
    canary: CanaryShare | None = None  # the canary this replica runs, if any, and its share
    versions: list[ModelVersion]


@router.get("/models", responses={503: _STORE_DOWN})
def list_versions(_: ClaimsDep, serving: ServingDep) -> VersionsResponse:
    """Every stored model version, newest first, with its metrics and which one is serving."""
    current = serving.current
    serving_version = current.version if current else None
    runner = serving.shadow
    shadow_version = runner.version if runner else None
    canary = canary_share(serving)
    store = serving.store
    try:
        # A version being published or damaged is left out by versions(): listed once it reads.
        stored = [(meta, store.record(version)) for version, meta in store.versions()]
    except StoreUnavailable as exc:
        raise _store_unavailable(exc) from None
    alias_version, alias = _alias_outcome(serving)
    versions: list[ModelVersion] = []
    for meta, record in stored:
        versions.append(
            ModelVersion(
                version=meta.version,
                name=meta.name,
                task=meta.task,
                metric=meta.metric,
                metrics=meta.metrics,
                trained_at=meta.trained_at,
                serving=meta.version == serving_version,
                shadow=meta.version == shadow_version,
                canary=canary is not None and meta.version == canary.version,
                status=record.status if record else "accepted",
                origin=record.origin if record else None,
                source=_imported_from(meta.source),
                parity_max_difference=meta.parity.max_difference if meta.parity else None,
                job_id=record.job_id if record else None,
                gate=record.gate if record else None,
                mlflow_run_id=meta.mlflow_run_id,
                registered_model=meta.registered_model,
                registered_version=meta.registered_version,
                mlflow_alias=alias if meta.version == alias_version else None,
                candidates=[c.name for c in meta.candidates],
            )
        )
    return VersionsResponse(serving=serving_version, shadow=shadow_version, canary=canary, versions=versions)


def _imported_from(source: ModelSource | None) -> ImportedFrom | None:
    return ImportedFrom(flavor=source.flavor, uri=source.uri) if source is not None else None


def _alias_outcome(serving: ServingState) -> tuple[str | None, AliasOutcome | None]:
    """The version MLflow's alias was last moved for, and how; nothing when the database is away
    (the versions are listed from the store all the same)."""
    try:
        pointer = serving.pointer.get()
    except DATABASE_UNAVAILABLE as exc:
        log.warning("GET /models without the alias outcome: %s", str(exc).splitlines()[0])
        return None, None
    return (pointer.alias_version, pointer.alias) if pointer is not None else (None, None)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, examples=["2026-11-23T03-14-31"])


@router.post(
    "/model/rollback",
    responses={
        404: {"model": ErrorDetail, "description": "No such version in the store"},
        409: _REFUSED,
        503: _STORE_DOWN,
        507: _CACHE_FULL,
    },
)
def rollback(
    body: RollbackRequest, admin: AdminDep, serving: ServingDep, alias: ChampionAliasDep
) -> RollbackResponse:
    """Serve a stored version again (checksums verified first) on every replica; MLflow's `champion`
    alias follows, after the answer (`mlflow.status` is pending; GET /models says how it ended)."""
    previous = serving.current
    try:
        new = _swap(
            "rollback",
            admin,
            lambda: serving.serve_version(body.version, reason=f"rollback by {admin.username}"),
        )
    except UnknownVersion:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown model version {body.version!r}") from None
    # After the answer, in a subprocess (the API process never imports mlflow): the rollback is done.
    mlflow = alias.follow(new.metadata)
    return RollbackResponse(
        previous_version=previous.version if previous else None, model_version=new.version, mlflow=mlflow
    )
