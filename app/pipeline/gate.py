"""The promotion gate: does a challenger replace the champion? A pure function of the two scores."""

from __future__ import annotations

from app.core.messages import GateOutcome
from app.core.quality import gate_bound, passes_gate


def promotion_gate(
    metric: str,
    challenger: float,
    champion: float | None,
    tolerance: float,
    greater_is_better: bool,
    champion_version: str | None = None,
) -> GateOutcome:
    """The challenger passes when its score is at least the champion's minus the tolerance (at most
    plus it, for a metric where lower is better). No champion: it passes."""
    if champion is None:
        return GateOutcome(
            metric=metric,
            challenger=challenger,
            tolerance=tolerance,
            champion_version=champion_version,
            passed=True,
            reason="no champion was serving",
        )
    bound = gate_bound(champion, tolerance, greater_is_better)
    passed = passes_gate(challenger, champion, tolerance, greater_is_better)
    relation = ">=" if greater_is_better else "<="
    reason = (
        f"test {metric} {challenger:.4f} {'passes' if passed else 'fails'} the gate {relation} "
        f"{round(bound, 6):.4f} (champion {champion:.4f} on the same test split, tolerance {tolerance})"
    )
    return GateOutcome(
        metric=metric,
        challenger=challenger,
        tolerance=tolerance,
        champion=champion,
        champion_version=champion_version,
        passed=passed,
        reason=reason,
    )


def not_comparable(
    metric: str, challenger: float, tolerance: float, champion_version: str, why: str
) -> GateOutcome:
    """The champion cannot be scored on this data (other features, another task): no promotion."""
    return GateOutcome(
        metric=metric,
        challenger=challenger,
        tolerance=tolerance,
        champion_version=champion_version,
        passed=False,
        reason=f"not comparable: {why}",
    )
