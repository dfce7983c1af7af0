"""GET /monitoring: what the UI's Monitoring page shows, computed from the prediction log (so every
replica answers the same) and the served model's reference profile: live quality and its label-free
estimate per hour, drift per feature, the shadow challenger's agreement with the champion, and the
newest predictions with their ground truth.

Scope admin: the answer holds users' inputs and usernames.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from app.api.deps import AdminDep, PredictionsDep, ServingDep, SettingsDep
from app.core.artifacts import REFERENCE_PROFILE_FILE, ReferenceProfile
from app.core.quality import Confusion, Errors, Quality
from app.db.hour_bucket import HOUR_SECONDS
from app.db.prediction_log import HourlyCounts, PredictionLogStore, ShadowCounts
from app.db.prediction_log import RecentPrediction as LoggedRecent
from app.observability.drift import no_reference_profile
from app.observability.drift_histograms import feature_histograms
from app.serving.predictor import Predictor
from app.serving.shadow import AGREEMENT_RTOL
from app.serving.state import ServingState

router = APIRouter(tags=["monitoring"])

# A month of hourly buckets at most (the log keeps PREDICTION_LOG_DAYS anyway).
MAX_HOURS = 24 * 31
MAX_RECENT = 500
# Drift reads at most this many of the window's newest inputs: enough for steady shares per bin,
# few enough to parse within a request.
DRIFT_ROWS = 10_000


class Figures(BaseModel):
    """Live quality on labelled predictions: accuracy and macro-F1, or MAE and RMSE (null otherwise)."""

    labelled: int
    accuracy: float | None = None
    macro_f1: float | None = None
    mae: float | None = None
    rmse: float | None = None


class VersionQuality(Figures):
    model_version: str
    predictions: int
    # The mean top probability of all its predictions, labelled or not: what the model expects its
    # accuracy to be. An estimate (a calibrated model's is close), not a measurement; null for a regression.
    expected_accuracy: float | None


class HourQuality(VersionQuality):
    hour: AwareDatetime  # the hour's start, UTC


class Thresholds(BaseModel):
    """What LiveQualityLow compares with: LIVE_ACCURACY_MIN, LIVE_MAE_MAX, LIVE_QUALITY_MIN_LABELS."""

    accuracy_min: float
    mae_max: float | None
    min_labels: int


class QualityReport(BaseModel):
    hourly: list[HourQuality]  # by hour, then version
    versions: list[VersionQuality]  # the whole window
    thresholds: Thresholds


class FeatureDrift(BaseModel):
    feature: str
    type: str
    bins: list[str]
    training: list[float]  # the training share per bin (reference_profile.json)
    recent: list[float]  # the window's inputs' share per bin
    rows: int  # the window's inputs with a value for this feature
    psi: float | None  # null when no input had a value


class DriftReport(BaseModel):
    model_version: str | None  # whose reference profile
    rows: int  # logged inputs read: the window's newest, up to max_rows
    max_rows: int
    features: list[FeatureDrift]
    unavailable: str | None = None  # why there are no histograms


class ShadowVersion(BaseModel):
    version: str
    compared: int  # logged rows of the window it answered too
    # As predictor_shadow_rows_total counts it: the same label, or a value within 1% of the champion's.
    agreed: int
    agreement: float
    mean_absolute_difference: float | None  # from the champion's value (regression)
    last_seen: AwareDatetime  # the newest logged row it answered
    quality: Figures  # its own answers to the labelled rows


class ShadowReport(BaseModel):
    current: str | None  # the shadow the serving pointer names now (POST /model/shadow), if any
    versions: list[ShadowVersion]  # each that answered logged rows of the window, newest first


class RecentPrediction(BaseModel):
    prediction_id: str
    time: AwareDatetime
    model_version: str
    username: str
    input: dict[str, Any]
    answer: Any  # as /predict gave it
    true_label: str | None
    true_value: float | None
    labelled_at: AwareDatetime | None


class MonitoringReport(BaseModel):
    hours: int
    since: AwareDatetime
    serving_version: str | None
    task: str | None
    prediction_log_sample: float  # PREDICTION_LOG_SAMPLE: 0 logs nothing, so all of this stays empty
    quality: QualityReport
    drift: DriftReport
    shadow: ShadowReport
    recent: list[RecentPrediction]  # newest first


@router.get("/monitoring")
def monitoring(
    _: AdminDep,
    store: PredictionsDep,
    serving: ServingDep,
    settings: SettingsDep,
    hours: Annotated[int, Query(ge=1, le=MAX_HOURS, description="the window, in hours")] = 24,
    limit: Annotated[int, Query(ge=1, le=MAX_RECENT, description="recent predictions listed")] = 50,
) -> MonitoringReport:
    """Live quality per hour and version (with the expected accuracy, an estimate), drift per feature
    against the training histogram, the shadow's agreement with the champion, and the newest
    predictions with their feedback, over the last `hours`."""
    since = time.time() - hours * HOUR_SECONDS
    current = serving.current
    thresholds = Thresholds(
        accuracy_min=settings.live_accuracy_min,
        mae_max=settings.live_mae_max,
        min_labels=settings.live_quality_min_labels,
    )
    return MonitoringReport(
        hours=hours,
        since=_moment(since),
        serving_version=current.version if current else None,
        task=current.metadata.task if current else None,
        prediction_log_sample=settings.prediction_log_sample,
        quality=_quality(store.hourly(since), thresholds),
        drift=_drift(store, current, serving.folder, since),
        shadow=_shadow(store, serving, since),
        recent=[_recent(row) for row in store.recent(limit)],
    )


def _moment(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def _figures(confusion: Confusion, errors: Errors) -> Figures:
    counts: Confusion | Errors = errors if errors.labelled and not confusion.labelled else confusion
    return Figures.model_validate(Quality.of(counts).as_dict())


def _quality(hourly: list[HourlyCounts], thresholds: Thresholds) -> QualityReport:
    rows: list[HourQuality] = []
    by_version: dict[str, list[HourlyCounts]] = {}
    for counts in sorted(hourly, key=lambda c: (c.hour, c.version)):
        rows.append(
            HourQuality(
                hour=_moment(counts.hour * HOUR_SECONDS),
                model_version=counts.version,
                predictions=counts.predictions,
                expected_accuracy=counts.mean_confidence,
                **_figures(counts.confusion, counts.errors).model_dump(),
            )
        )
        by_version.setdefault(counts.version, []).append(counts)
    versions = [_window(version, parts) for version, parts in by_version.items()]
    return QualityReport(hourly=rows, versions=versions, thresholds=thresholds)


def _window(version: str, hours: list[HourlyCounts]) -> VersionQuality:
    """One version's hours added up: the counts add, the mean confidences weigh by predictions."""
    confusion, errors = Confusion(), Errors()
    for hour in hours:
        for (predicted, true), n in hour.confusion.counts.items():
            confusion.add(predicted, true, n)
        errors.labelled += hour.errors.labelled
        errors.absolute += hour.errors.absolute
        errors.squared += hour.errors.squared
    confident = [(h.mean_confidence, h.predictions) for h in hours if h.mean_confidence is not None]
    weight = sum(n for _, n in confident)
    return VersionQuality(
        model_version=version,
        predictions=sum(h.predictions for h in hours),
        expected_accuracy=sum(c * n for c, n in confident) / weight if weight else None,
        **_figures(confusion, errors).model_dump(),
    )


@lru_cache(maxsize=4)
def _profile(folder: Path, version: str) -> ReferenceProfile:
    """Read once per served version: a version's folder does not change."""
    return ReferenceProfile.model_validate_json((folder / REFERENCE_PROFILE_FILE).read_text())


def _drift(
    store: PredictionLogStore, current: Predictor | None, folder: Path | None, since: float
) -> DriftReport:
    empty = DriftReport(model_version=None, rows=0, max_rows=DRIFT_ROWS, features=[])
    if current is None or folder is None:
        return empty.model_copy(update={"unavailable": "no model is being served"})
    try:
        profile = _profile(folder, current.version)
    except (OSError, ValueError):
        return empty.model_copy(
            update={
                "model_version": current.version,
                "unavailable": no_reference_profile(current.version),
            }
        )
    inputs = store.features_since(since, DRIFT_ROWS)
    histograms = feature_histograms(profile, current.metadata.feature_names, inputs)
    return DriftReport(
        model_version=current.version,
        rows=len(inputs),
        max_rows=DRIFT_ROWS,
        features=[
            FeatureDrift(
                feature=h.feature,
                type=h.type,
                bins=h.bins,
                training=h.training,
                recent=h.recent,
                rows=h.rows,
                psi=None if math.isnan(h.psi) else h.psi,
            )
            for h in histograms
        ],
    )


def _shadow(store: PredictionLogStore, serving: ServingState, since: float) -> ShadowReport:
    # The database's pointer, not this replica's runner: every replica answers the same.
    pointer = serving.pointer.get()
    agreements = store.shadow_agreement(since, AGREEMENT_RTOL)
    confusions, errors = store.shadow_confusions(since), store.shadow_errors(since)

    def version(counts: ShadowCounts) -> ShadowVersion:
        return ShadowVersion(
            version=counts.version,
            compared=counts.compared,
            agreed=counts.agreed,
            agreement=counts.agreed / counts.compared,
            mean_absolute_difference=counts.mean_absolute_difference,
            last_seen=_moment(counts.last_at),
            quality=_figures(
                confusions.get(counts.version, Confusion()), errors.get(counts.version, Errors())
            ),
        )

    return ShadowReport(
        current=pointer.shadow_version if pointer else None,
        versions=[version(c) for c in sorted(agreements, key=lambda c: c.last_at, reverse=True)],
    )


def _recent(row: LoggedRecent) -> RecentPrediction:
    logged = row.logged
    return RecentPrediction(
        prediction_id=logged.prediction_id,
        time=_moment(logged.created_at),
        model_version=logged.model_version,
        username=logged.username,
        input=logged.features,
        answer=logged.answer,
        true_label=row.true_label,
        true_value=row.true_value,
        labelled_at=_moment(row.labelled_at) if row.labelled_at is not None else None,
    )
