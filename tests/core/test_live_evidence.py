"""The promotion's live rule: enough labelled predictions both answered, and a metric no worse."""

from __future__ import annotations

from app.core.live_evidence import LiveEvidence
from app.core.quality import Confusion, Errors


def confusion(right: int, wrong: int) -> Confusion:
    counts = Confusion()
    counts.add("a", "a", right)
    if wrong:
        counts.add("b", "a", wrong)
    return counts


def errors(*pairs: tuple[float, float]) -> Errors:
    counts = Errors()
    for predicted, true in pairs:
        counts.add(predicted, true)
    return counts


def test_too_few_labels_refuse_whatever_the_figures():
    evidence = LiveEvidence.weigh("classification", (confusion(5, 5), confusion(10, 0)), 100, 0.01)
    assert evidence.figures() == {
        "metric": "accuracy",
        "champion": 0.5,
        "shadow": 1.0,
        "labelled": 10,
        "min_labels": 100,
        "tolerance": 0.01,
    }
    assert evidence.refusal is not None and "10 labelled predictions" in evidence.refusal
    nothing = LiveEvidence.weigh("classification", None, 1, 0.01)
    assert (nothing.champion, nothing.shadow, nothing.labelled) == (None, None, 0)
    assert nothing.refusal is not None


def test_accuracy_within_the_tolerance_passes_below_it_fails():
    assert (
        LiveEvidence.weigh("classification", (confusion(91, 9), confusion(90, 10)), 100, 0.01).refusal is None
    )
    worse = LiveEvidence.weigh("classification", (confusion(91, 9), confusion(87, 13)), 100, 0.01)
    assert (
        worse.refusal
        == "the shadow's live accuracy 0.8700 is below the champion's 0.9100 minus the tolerance 0.01"
    )


def test_an_error_metric_must_be_at_most_the_champions_plus_the_tolerance():
    champion = errors((1.0, 0.0), (0.0, 1.0))  # MAE 1.0
    assert (
        LiveEvidence.weigh("regression", (champion, errors((1.5, 0.0), (0.0, 0.5))), 2, 0.01).refusal is None
    )
    worse = LiveEvidence.weigh("regression", (champion, errors((2.0, 0.0), (0.0, 1.0))), 2, 0.01)
    assert (worse.metric, worse.champion, worse.shadow) == ("mae", 1.0, 1.5)
    assert worse.refusal is not None and "above the champion's 1.0000 plus the tolerance" in worse.refusal
