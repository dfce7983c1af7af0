"""bench.prediction_log drives the app with the log off and on, and reports both ratios per case."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from bench import prediction_log
from tests.support.models import write_model


def test_it_measures_both_cases_with_the_log_off_and_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    write_model(tmp_path / "models")
    args = argparse.Namespace(model_dir=tmp_path / "models", requests=3, rounds=1, sample=1.0)
    figures = asyncio.run(prediction_log.measure(args))
    assert set(figures) == {"1 row", "100 rows"}
    for ratios in figures.values():
        assert ratios["wall_ratio"] > 0 and ratios["cpu_ratio"] > 0
    assert "on/off" in capsys.readouterr().err


def test_it_measures_the_logs_costs_per_call_and_per_row_in_a_checkout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    write_model(tmp_path / "models")
    root = Path(prediction_log.__file__).resolve().parent.parent
    cases = {"1 row": (1, 3), "100 rows": (100, 2)}
    found = prediction_log.costs({"after": root}, tmp_path / "models", 1.0, None, cases)
    assert set(found["after"]) == set(cases)
    for figures in found["after"].values():
        assert figures["request_us"] > 0 and figures["writer_us_per_row"] > 0
    assert "writer/row" in capsys.readouterr().err
