"""The live quality gauges: accuracy and macro-F1 (or MAE and RMSE) by model version and role, over
the labelled predictions of the last LIVE_QUALITY_WINDOW_HOURS.

The database aggregates (a confusion table or error sums per version, app/db/prediction_log.py),
so a refresh reads a few rows whatever the traffic; every replica reads the same figures. role is
`served` for the answers sent, `shadow` for a shadow challenger's answers to the same rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from app.core.outage import Outage
from app.core.periodic import Periodic
from app.core.quality import Confusion, Errors, Quality
from app.observability import metrics

log = logging.getLogger("predictor")


class LabelledCounts(Protocol):
    """What the prediction log aggregates (app.db.prediction_log.PredictionLogStore)."""

    def confusions(self, since: float) -> dict[str, Confusion]: ...

    def errors(self, since: float) -> dict[str, Errors]: ...

    def shadow_confusions(self, since: float) -> dict[str, Confusion]: ...

    def shadow_errors(self, since: float) -> dict[str, Errors]: ...


class LiveQuality:
    def __init__(
        self, counts: LabelledCounts, window_hours: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.counts = counts
        self.window_seconds = window_hours * 3600
        self._clock = clock
        self._published: set[tuple[str, str]] = set()
        # The database: while it does not answer, the gauges keep their last values.
        self.health = Outage("live quality not read", "live quality read again")

    def read(self) -> dict[tuple[str, str], Quality]:
        """Per (model version, role): the live figures, as of now."""
        since = self._clock() - self.window_seconds
        found: dict[tuple[str, str], Quality] = {}
        for role, confusions, errors in (
            ("served", self.counts.confusions, self.counts.errors),
            ("shadow", self.counts.shadow_confusions, self.counts.shadow_errors),
        ):
            counted: dict[str, Confusion | Errors] = {**errors(since), **confusions(since)}
            for version, count in counted.items():
                found[(version, role)] = Quality.of(count)
        return found

    def refresh(self) -> dict[tuple[str, str], Quality]:
        """Read and publish; a version that left the window reads 0 labelled (gauges are not removed:
        other processes share the files)."""
        found = self.read()
        for key in self._published - found.keys():
            found[key] = Quality(0)
        for (version, role), quality in found.items():
            _publish(version, role, quality)
        self._published = {key for key, quality in found.items() if quality.labelled}
        return found

    def watch(self, interval: float) -> Periodic:
        """Refresh every `interval` seconds (started; stop() stops and joins it)."""
        return Periodic("live-quality", interval, self._refresh_or_say, at_start=True).start()

    def _refresh_or_say(self) -> None:
        try:
            self.refresh()
        except Exception as exc:
            self.health.failed(exc)
            return
        self.health.answered()


def publish_thresholds(accuracy_min: float, mae_max: float | None, min_labels: int) -> None:
    """The settings LiveQualityLow compares with, as gauges."""
    metrics.LIVE_ACCURACY_MIN.set(accuracy_min)
    metrics.LIVE_MAE_MAX.set(math.inf if mae_max is None else mae_max)
    metrics.LIVE_MIN_LABELS.set(min_labels)


def _publish(version: str, role: str, quality: Quality) -> None:
    metrics.LIVE_LABELLED.labels(model_version=version, role=role).set(quality.labelled)
    for gauge, value in (
        (metrics.LIVE_ACCURACY, quality.accuracy),
        (metrics.LIVE_MACRO_F1, quality.macro_f1),
        (metrics.LIVE_MAE, quality.mae),
        (metrics.LIVE_RMSE, quality.rmse),
    ):
        if not math.isnan(value) or quality.labelled == 0:
            gauge.labels(model_version=version, role=role).set(value)
