"""The promotion gate as a pure function: higher- and lower-is-better metrics, and the tolerance."""

from __future__ import annotations

import pytest

from app.pipeline.gate import not_comparable, promotion_gate


@pytest.mark.parametrize(
    ("challenger", "champion", "passed"),
    [(0.95, 0.90, True), (0.90, 0.90, True), (0.89, 0.90, True), (0.88, 0.90, True), (0.87, 0.90, False)],
)
def test_higher_is_better_passes_down_to_the_champion_minus_the_tolerance(challenger, champion, passed):
    outcome = promotion_gate("f1_macro", challenger, champion, tolerance=0.02, greater_is_better=True)
    assert outcome.passed is passed
    assert outcome.champion == champion and outcome.challenger == challenger
    assert (">= 0.8800" in outcome.reason) and (("passes" if passed else "fails") in outcome.reason)


@pytest.mark.parametrize(
    ("challenger", "champion", "passed"),
    [(9.0, 10.0, True), (10.0, 10.0, True), (10.5, 10.0, True), (10.6, 10.0, False)],
)
def test_lower_is_better_passes_up_to_the_champion_plus_the_tolerance(challenger, champion, passed):
    outcome = promotion_gate("rmse", challenger, champion, tolerance=0.5, greater_is_better=False)
    assert outcome.passed is passed
    assert "<= 10.5000" in outcome.reason


def test_zero_tolerance_needs_at_least_the_champions_score():
    assert promotion_gate("r2", 0.8, 0.8, tolerance=0.0, greater_is_better=True).passed
    assert not promotion_gate("r2", 0.7999, 0.8, tolerance=0.0, greater_is_better=True).passed


def test_without_a_champion_the_challenger_passes():
    outcome = promotion_gate("f1_macro", 0.1, None, tolerance=0.0, greater_is_better=True)
    assert outcome.passed and outcome.champion is None
    assert outcome.reason == "no champion was serving"


def test_a_champion_that_cannot_be_scored_is_no_promotion():
    outcome = not_comparable("f1_macro", 0.99, 0.01, "v1", "the champion v1 takes other features")
    assert not outcome.passed and outcome.champion_version == "v1"
    assert outcome.reason.startswith("not comparable: ")


def test_the_outcome_reads_back_from_json_as_the_job_writes_it():
    outcome = promotion_gate(
        "f1_macro", 0.9, 0.8, tolerance=0.01, greater_is_better=True, champion_version="v1"
    )
    assert type(outcome).model_validate_json(outcome.model_dump_json()) == outcome
