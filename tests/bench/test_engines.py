"""bench/engines.py: the imported models' figures are measured on what `models import` compiles."""

from __future__ import annotations

from bench import engines


def test_imported_lightgbm_and_xgboost_are_timed_against_their_library_on_1_and_100_rows() -> None:
    timings = engines.measure_imported(repeats=5)

    assert [(t.candidate, t.rows) for t in timings] == [
        ("lightgbm (imported)", 1),
        ("lightgbm (imported)", 100),
        ("xgboost (imported)", 1),
        ("xgboost (imported)", 100),
    ]
    assert all(t.pipeline_us > 0 and t.onnx_us > 0 for t in timings)
    assert "library µs" in engines.format_timings(timings)
