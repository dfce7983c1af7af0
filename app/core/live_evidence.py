"""Whether a challenger earned the champion's place on live traffic (POST /model/promote for a
shadow, POST /model/canary/promote for a canary).

A pure function of the two models' counts on labelled predictions: for a shadow, the same ones (those
the champion answered, the shadow scored too, and the ground truth came back for); for a canary, each
its own (the requests each answered since the canary started). Enough of them, and the challenger's
live metric at least the champion's minus the promotion gate's tolerance (at most plus it for an
error), the rule app/pipeline/gate.py applies to test scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.core.quality import PROMOTION_METRIC, Confusion, Errors, Quality, passes_gate


@dataclass(frozen=True)
class LiveEvidence:
    metric: str  # PROMOTION_METRIC's for the task: accuracy, or mae
    greater_is_better: bool
    champion: float | None  # None: no labelled prediction both answered
    shadow: float | None  # the challenger's figure (a shadow's or a canary's)
    labelled: int  # the labelled predictions both answered
    min_labels: int
    tolerance: float
    challenger: str = "shadow"  # or "canary": what the figures and the refusal call it

    @classmethod
    def weigh_canary(
        cls,
        task: str,
        champion: Confusion | Errors | None,
        canary: Confusion | Errors | None,
        min_labels: int,
        tolerance: float,
    ) -> LiveEvidence:
        """Each model's counts on the labelled predictions it answered itself since the canary started;
        `labelled` is the fewer of the two."""
        metric, greater_is_better = PROMOTION_METRIC[task]
        ours = Quality.of(champion) if champion is not None else Quality(0)
        theirs = Quality.of(canary) if canary is not None else Quality(0)
        return cls(
            metric,
            greater_is_better,
            _figure(ours, metric),
            _figure(theirs, metric),
            min(ours.labelled, theirs.labelled),
            min_labels,
            tolerance,
            "canary",
        )

    @classmethod
    def weigh(
        cls,
        task: str,
        counts: tuple[Confusion | Errors, Confusion | Errors] | None,
        min_labels: int,
        tolerance: float,
    ) -> LiveEvidence:
        """`counts`: the champion's and the shadow's (PredictionLogStore.head_to_head), or None."""
        metric, greater_is_better = PROMOTION_METRIC[task]
        if counts is None:
            return cls(metric, greater_is_better, None, None, 0, min_labels, tolerance)
        champion, shadow = (Quality.of(c) for c in counts)
        return cls(
            metric,
            greater_is_better,
            _figure(champion, metric),
            _figure(shadow, metric),
            champion.labelled,
            min_labels,
            tolerance,
        )

    @property
    def refusal(self) -> str | None:
        """Why the challenger may not be promoted, or None when it may."""
        if self.labelled < self.min_labels or self.champion is None or self.shadow is None:
            if self.challenger == "canary":
                return (
                    f"{self.labelled} labelled predictions answered by the canary or the champion, "
                    f"whichever has fewer, since the canary started: {self.min_labels} of each needed "
                    "(PROMOTION_MIN_LABELS)"
                )
            return (
                f"{self.labelled} labelled predictions answered by both the champion and the shadow: "
                f"{self.min_labels} needed (PROMOTION_MIN_LABELS)"
            )
        if not passes_gate(self.shadow, self.champion, self.tolerance, self.greater_is_better):
            side = "below the champion's" if self.greater_is_better else "above the champion's"
            sign = "minus" if self.greater_is_better else "plus"
            return (
                f"the {self.challenger}'s live {self.metric} {self.shadow:.4f} is {side} "
                f"{self.champion:.4f} {sign} the tolerance {self.tolerance}"
            )
        return None

    def figures(self) -> dict[str, Any]:
        """Both figures and what they were judged by, for the answer either way."""
        return {
            "metric": self.metric,
            "champion": self.champion,
            self.challenger: self.shadow,
            "labelled": self.labelled,
            "min_labels": self.min_labels,
            "tolerance": self.tolerance,
        }


def _figure(quality: Quality, metric: str) -> float | None:
    value = quality.figure(metric)
    return None if math.isnan(value) else round(value, 6)
