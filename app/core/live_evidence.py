"""Whether a shadow challenger earned the champion's place on live traffic (POST /model/promote).

A pure function of the two models' counts on the same labelled predictions (those the champion
answered, the shadow scored too, and the ground truth came back for): enough of them, and the
shadow's live metric at least the champion's minus the promotion gate's tolerance (at most plus it
for an error), the rule app/pipeline/gate.py applies to test scores.
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
    shadow: float | None
    labelled: int  # the labelled predictions both answered
    min_labels: int
    tolerance: float

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
        """Why the shadow may not be promoted, or None when it may."""
        if self.labelled < self.min_labels or self.champion is None or self.shadow is None:
            return (
                f"{self.labelled} labelled predictions answered by both the champion and the shadow: "
                f"{self.min_labels} needed (PROMOTION_MIN_LABELS)"
            )
        if not passes_gate(self.shadow, self.champion, self.tolerance, self.greater_is_better):
            side = "below the champion's" if self.greater_is_better else "above the champion's"
            sign = "minus" if self.greater_is_better else "plus"
            return (
                f"the shadow's live {self.metric} {self.shadow:.4f} is {side} "
                f"{self.champion:.4f} {sign} the tolerance {self.tolerance}"
            )
        return None

    def figures(self) -> dict[str, Any]:
        """Both figures and what they were judged by, for the answer either way."""
        return {
            "metric": self.metric,
            "champion": self.champion,
            "shadow": self.shadow,
            "labelled": self.labelled,
            "min_labels": self.min_labels,
            "tolerance": self.tolerance,
        }


def _figure(quality: Quality, metric: str) -> float | None:
    value = quality.figure(metric)
    return None if math.isnan(value) else round(value, 6)
