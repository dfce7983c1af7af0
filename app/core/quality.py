"""Live quality: how right the served answers were, from the ground truth sent later (POST /feedback).

Pure functions of counts the database aggregates (app/db/prediction_log.py): a confusion table per
model version for a classifier, sums of errors for a regression. The same figures judge a shadow
challenger against the champion on the same labelled predictions (POST /model/promote).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Confusion:
    """Labelled predictions of one model, counted by (predicted label, true label)."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, predicted: str, true: str, count: int = 1) -> None:
        key = (predicted, true)
        self.counts[key] = self.counts.get(key, 0) + count

    @property
    def labelled(self) -> int:
        return sum(self.counts.values())

    def accuracy(self) -> float:
        total = self.labelled
        right = sum(n for (predicted, true), n in self.counts.items() if predicted == true)
        return right / total if total else math.nan

    def macro_f1(self) -> float:
        """F1 averaged over every label seen, predicted or true (scikit-learn's `average="macro"`)."""
        labels = {label for pair in self.counts for label in pair}
        if not labels:
            return math.nan
        scores = []
        for label in labels:
            tp = self.counts.get((label, label), 0)
            predicted = sum(n for (p, _), n in self.counts.items() if p == label)
            actual = sum(n for (_, t), n in self.counts.items() if t == label)
            scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
        return sum(scores) / len(scores)


@dataclass
class Errors:
    """Labelled predictions of one regression model: the count and the sums MAE and RMSE need."""

    labelled: int = 0
    absolute: float = 0.0
    squared: float = 0.0

    def add(self, predicted: float, true: float) -> None:
        self.labelled += 1
        self.absolute += abs(predicted - true)
        self.squared += (predicted - true) ** 2

    def mae(self) -> float:
        return self.absolute / self.labelled if self.labelled else math.nan

    def rmse(self) -> float:
        return math.sqrt(self.squared / self.labelled) if self.labelled else math.nan


@dataclass(frozen=True)
class Quality:
    """One model's live figures: accuracy and macro-F1, or MAE and RMSE; NaN for the other task's."""

    labelled: int
    accuracy: float = math.nan
    macro_f1: float = math.nan
    mae: float = math.nan
    rmse: float = math.nan

    @classmethod
    def of(cls, counts: Confusion | Errors) -> Quality:
        if isinstance(counts, Confusion):
            return cls(counts.labelled, accuracy=counts.accuracy(), macro_f1=counts.macro_f1())
        return cls(counts.labelled, mae=counts.mae(), rmse=counts.rmse())

    def figure(self, metric: str) -> float:
        """The figure named `metric` (accuracy, macro_f1, mae, rmse)."""
        return float(getattr(self, metric))

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: NaN (no labels, or the other task's figure) as None."""
        return {
            name: None if isinstance(value, float) and math.isnan(value) else value
            for name, value in vars(self).items()
        }


def gate_bound(champion: float, tolerance: float, greater_is_better: bool) -> float:
    """The promotion gate's bound: the champion's score minus the tolerance (plus it, for an error)."""
    return champion - tolerance if greater_is_better else champion + tolerance


def passes_gate(challenger: float, champion: float, tolerance: float, greater_is_better: bool) -> bool:
    """The one promotion rule, for test scores (app.pipeline.gate) and live ones (live_evidence)."""
    bound = gate_bound(champion, tolerance, greater_is_better)
    return challenger >= bound if greater_is_better else challenger <= bound


# The live metric a promotion compares, and whether more is better, per task.
PROMOTION_METRIC: Mapping[str, tuple[str, bool]] = {
    "classification": ("accuracy", True),
    "regression": ("mae", False),
}


def confusions(rows: Iterable[tuple[str | None, str | None, str | None, int]]) -> dict[str, Confusion]:
    """Per model version, from (version, predicted label, true label, count) rows."""
    found: dict[str, Confusion] = {}
    for version, predicted, true, count in rows:
        if version is None or predicted is None or true is None:
            continue
        found.setdefault(version, Confusion()).add(predicted, true, count)
    return found
