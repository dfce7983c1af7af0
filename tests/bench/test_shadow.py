"""bench/shadow.py's pure parts: the shadow's counts read from /metrics, the ratio, the verdict, the copy."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import Case, LoadResult
from bench.shadow import P50_TARGET, ShadowCost, challenger_of, report, shadow_rows
from tests.support.models import write_model

EXPOSITION = """\
# HELP predictor_shadow_rows_total Rows offered to the shadow challenger, by outcome.
# TYPE predictor_shadow_rows_total counter
predictor_shadow_rows_total{model_version="v2",result="agreed"} 1200.0
predictor_shadow_rows_total{model_version="v2",result="disagreed"} 30.0
predictor_shadow_rows_total{model_version="v2",result="dropped"} 5.0
predictor_shadow_rows_total{model_version="v2",result="failed"} 0.0
predictor_shadow_rows_total{model_version="v3",result="agreed"} 7.0
"""


def load(p50_ms: float) -> LoadResult:
    return LoadResult(1000, 10.0, 100.0, p50_ms, p50_ms, 2 * p50_ms, p50_ms, 3 * p50_ms, 0, 0)


def test_the_shadows_rows_are_read_per_version_from_the_metrics():
    assert shadow_rows(EXPOSITION, "v2") == {"agreed": 1200, "disagreed": 30, "dropped": 5, "failed": 0}
    assert shadow_rows(EXPOSITION, "v3")["agreed"] == 7
    assert shadow_rows("", "v2") == dict.fromkeys(("agreed", "disagreed", "dropped", "failed"), 0.0)


def test_the_ratio_of_the_mean_p50s_is_judged_against_the_target():
    rows = {"agreed": 90.0, "disagreed": 10.0, "dropped": 0.0, "failed": 0.0}
    case = Case("svc", 1, 32)
    within = ShadowCost(case, "1", [load(10.0), load(12.0)], [load(11.0), load(12.0)], rows)
    assert round(within.ratio, 3) == round(23 / 22, 3) and within.passed
    beyond = ShadowCost(case, "1", [load(10.0)], [load(10.0 * P50_TARGET + 0.1)], rows)
    assert not beyond.passed
    text = report(beyond)
    assert "MISSES the target <= 1.10" in text and "scored 100 of 100 rows offered" in text
    assert json.loads(json.dumps(within.as_json()))["p50_on_over_off"] == round(within.ratio, 3)


def test_the_challenger_is_the_same_model_under_another_version(tmp_path: Path):
    write_model(tmp_path / "models", version="v1")
    copy = challenger_of(tmp_path / "models", tmp_path / "challenger")
    assert json.loads((copy / "model.json").read_text())["version"] == "v1-shadow"
    assert (copy / "model.onnx").read_bytes() == (tmp_path / "models" / "model.onnx").read_bytes()
