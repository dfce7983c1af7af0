"""bench.inprocess drives both apps through every measured route (a 200 each) and reports each ratio."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import inprocess
from tests.support.models import write_model


def test_it_measures_every_route_of_both_apps(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    write_model(tmp_path / "models")
    args = argparse.Namespace(
        model_dir=tmp_path / "models",
        requests=3,
        rounds=1,
        profile=True,
        sort="cumulative",
        profile_rows="1 row",
    )
    inprocess.asyncio.run(inprocess.measure(args))
    report = capsys.readouterr().err
    for route in ("/health", "/predict 1 row", "/predict 100 rows"):
        line = next(line for line in report.splitlines() if line.startswith(route + " "))
        ours, ceiling, ratio = line[len(route) :].split()
        assert float(ours) > 0 and float(ceiling) > 0 and ratio.endswith("x")
    assert "app/api/routes/predict.py" in report  # the profile of our /predict


def test_a_request_that_fails_stops_the_run():
    async def refused() -> int:
        return 401

    with pytest.raises(SystemExit, match="answered 401"):
        inprocess.asyncio.run(inprocess.cpu_per_request(refused, 1))
