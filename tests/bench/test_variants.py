"""Ours served several ways (bench/variants.py): the plan, granian's and curl's commands, the CSV, ratios."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from bench.harness import BenchError, LoadResult
from bench.run import parse_args
from bench.variants import (
    CSV_ACCEPT,
    CURL_STATUS_MARKER,
    Variant,
    VariantResult,
    check_csv_answer,
    csv_lines,
    curl_csv_command,
    format_variants,
    granian_command,
    parse_curl_status,
    parse_servers,
    plan_variants,
    ratios,
    variant_verdicts,
    variants_json,
)

FEATURES = [
    {"name": "sepal_length", "type": "numeric", "min": 4.3, "max": 7.9},
    {"name": "city", "type": "categorical", "categories": ["lille", "lyon", "paris"]},
]


def load(throughput: float, p99: float = 10.0) -> LoadResult:
    return LoadResult(
        requests=int(throughput * 10),
        duration_s=10.0,
        throughput=throughput,
        p50_ms=p99 / 2,
        p90_ms=p99,
        p99_ms=p99,
        mean_ms=p99 / 2,
        max_ms=p99,
        non_200=0,
        socket_errors=0,
    )


def result(variant: Variant, one: list[float], hundred: list[float], csv_s: list[float]) -> VariantResult:
    return VariantResult(variant, {1: [load(t) for t in one], 100: [load(t) for t in hundred]}, csv_s)


def test_parse_servers_always_keeps_uvicorn_and_refuses_unknown_names():
    assert parse_servers("granian") == ["uvicorn", "granian"]
    assert parse_servers(" Granian , uvicorn ") == ["uvicorn", "granian"]
    assert parse_servers("") == ["uvicorn"]
    with pytest.raises(BenchError, match="unknown server"):
        parse_servers("hypercorn")


def test_variant_names_say_code_server_workers_and_log():
    assert Variant("ours").name == "ours uvicorn w1"
    assert Variant("baseline", log_off=True).name == "baseline uvicorn w1 log-off"
    assert Variant("ours", "granian", 2).label == "ours-granian-w2"


def test_plan_puts_ours_first_and_each_server_at_one_and_two_workers():
    assert plan_variants(1, baseline=False, log_off=False, servers=["uvicorn"]) == [Variant("ours")]
    planned = plan_variants(1, baseline=True, log_off=True, servers=["uvicorn", "granian"])
    assert [v.name for v in planned] == [
        "ours uvicorn w1",
        "baseline uvicorn w1",
        "ours uvicorn w1 log-off",
        "baseline uvicorn w1 log-off",
        "ours uvicorn w2",
        "ours granian w1",
        "ours granian w2",
    ]
    # With --workers 2, ours is already uvicorn with 2 workers: not served twice.
    names = [v.name for v in plan_variants(2, baseline=False, log_off=False, servers=["uvicorn", "granian"])]
    assert names == ["ours uvicorn w2", "ours uvicorn w1", "ours granian w1", "ours granian w2"]


def test_log_off_is_on_by_default_with_a_baseline_only(monkeypatch):
    monkeypatch.delenv("BENCH_LOG_OFF", raising=False)
    monkeypatch.delenv("BENCH_BASELINE", raising=False)
    assert parse_args([]).log_off is False
    assert parse_args(["--baseline", "HEAD"]).log_off is True
    assert parse_args(["--baseline", "HEAD", "--no-log-off"]).log_off is False
    monkeypatch.setenv("BENCH_LOG_OFF", "1")
    assert parse_args([]).log_off is True
    assert parse_args(["--servers", "granian"]).servers == ["uvicorn", "granian"]
    assert parse_args([]).csv_rows == 1_000_000


def test_parse_args_refuses_an_unknown_server_and_negative_rows():
    with pytest.raises(SystemExit):
        parse_args(["--servers", "gunicorn"])
    with pytest.raises(SystemExit):
        parse_args(["--csv-rows", "-1"])


def test_granian_serves_the_factory_over_asgi_with_the_header_timeout_in_ms():
    command = granian_command("/venv/bin/granian", 8123, 2, 15.0)
    assert command[0] == "/venv/bin/granian"
    assert command[-1] == "app.main:create_app"
    flags = " ".join(command)
    for expected in ("--interface asgi", "--factory", "--port 8123", "--workers 2", "--no-access-log"):
        assert expected in flags
    assert command[command.index("--http1-header-read-timeout") + 1] == "15000"
    # granian takes 1 ms to 60 s: a longer setting is cut to its most.
    assert "60000" in granian_command("g", 1, 1, 600.0)


def test_csv_lines_are_a_header_then_valid_deterministic_rows():
    text = "".join(csv_lines(FEATURES, 2500, distinct=1000))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2500
    assert list(rows[0]) == ["sepal_length", "city"]
    assert all(
        4.3 <= float(r["sepal_length"]) <= 7.9 and r["city"] in {"lille", "lyon", "paris"} for r in rows
    )
    assert rows[1000] == rows[0]  # the pattern repeats
    assert len({r["sepal_length"] for r in rows}) > 500
    assert text == "".join(csv_lines(FEATURES, 2500, distinct=1000))


def test_curl_keeps_the_token_off_the_command_line_and_sends_at_once():
    command = curl_csv_command("http://127.0.0.1:9/predict/csv", "/s/bench.csv", "/s/auth.txt")
    assert "@/s/auth.txt" in command
    assert "@/s/bench.csv" in command
    assert "Expect:" in command
    assert f"Accept: {CSV_ACCEPT}" in command
    assert not any("Bearer" in part for part in command)


def test_parse_curl_status_reads_its_marker_line():
    assert parse_curl_status(f"some warning\n{CURL_STATUS_MARKER}200 3.251000\n") == (200, 3.251)
    with pytest.raises(BenchError, match="no status"):
        parse_curl_status("curl: (7) Failed to connect")
    with pytest.raises(BenchError, match="code seconds"):
        parse_curl_status(f"{CURL_STATUS_MARKER}200\n")


def test_check_csv_answer_wants_every_row_and_no_error_line():
    row = b'{"prediction_id":"a-1","label":"setosa","probabilities":{}}'
    check_csv_answer(200, 3, row, 3)
    with pytest.raises(BenchError, match="answered 422"):
        check_csv_answer(422, 1, b'{"detail":"line 3"}', 3)
    with pytest.raises(BenchError, match="2 lines for 3 rows"):
        check_csv_answer(200, 2, row, 3)
    # A late bad line: a 200 whose last line is the error.
    with pytest.raises(BenchError, match="the last"):
        check_csv_answer(200, 3, b'{"status":422,"line":9,"detail":"x"}', 3)


def full_run() -> list[VariantResult]:
    return [
        result(Variant("ours"), [900, 1100], [400, 400], [2.0, 2.5, 3.0]),
        result(Variant("baseline"), [800], [500], [4.0]),
        result(Variant("ours", log_off=True), [1200, 1300], [500, 500], [2.0]),
        result(Variant("baseline", log_off=True), [1250], [400], [2.0]),
        result(Variant("ours", "granian", 1), [1500], [600], [2.0]),
        result(Variant("ours", "uvicorn", 2), [1400], [500], [1.0]),
    ]


def test_ratios_pair_the_servers_that_ran():
    made = {r.label: r for r in ratios(full_run(), 1, [1, 100], 1_000_000)}
    assert list(made) == [
        "log default / log off (ours)",
        "log default / log off (baseline)",
        "ours / baseline, both log off",
        "ours / baseline, log default",
        "granian / uvicorn, 1 worker(s)",
    ]  # no granian with 2 workers ran
    log = made["log default / log off (ours)"]
    assert log.by_rows == {1: 1000 / 1250, 100: 400 / 500}
    assert log.csv == pytest.approx(2.0 / 2.5)  # medians: 2.5 s against 2.0 s, as rows/s
    assert made["ours / baseline, both log off"].targets == {1: 0.95, 100: 0.95}
    assert made["granian / uvicorn, 1 worker(s)"].by_rows[1] == 1500 / 1000
    assert ratios([result(Variant("ours"), [1], [1], [])], 1, [1, 100], 10) == []


def test_verdicts_check_log_off_against_the_baseline_and_the_csv_speed():
    results = full_run()
    made = ratios(results, 1, [1, 100], 1_000_000)
    verdicts = variant_verdicts(results, made, 1, 1_000_000, "abcdef123")
    assert [(v["measured"], v["met"]) for v in verdicts] == [
        ("1.00x", True),  # 1250 / 1250
        ("1.25x", True),
        ("400,000 rows/s", True),  # 1,000,000 rows in a median of 2.5 s
    ]
    assert "baseline abcdef1 log-off" in verdicts[0]["target"]
    slow = [result(Variant("ours"), [1], [1], [10.0])]
    assert variant_verdicts(slow, [], 1, 1_000_000)[0]["met"] is False
    assert variant_verdicts([result(Variant("ours"), [1], [1], [])], [], 1, 10) == []


def test_table_and_json_carry_every_server_and_ratio():
    results = full_run()
    made = ratios(results, 1, [1, 100], 1_000_000)
    table = format_variants(results, made, [1, 100], 1_000_000, "logistic_regression")
    assert "ours granian w1" in table
    assert "log default / log off (ours) (ours uvicorn w1 / ours uvicorn w1 log-off): 1 row 0.80x" in table
    assert "400,000" in table
    document = json.loads(json.dumps(variants_json(results, made, [1, 100], 1_000_000, "lr")))
    first = document["servers"][0]
    assert first["name"] == "ours uvicorn w1"
    assert first["rows_1"]["throughput_mean"] == 1000.0
    assert first["csv"]["rows_per_s_median"] == 400000
    assert document["ratios"][2]["targets"] == {"rows_1": 0.95, "rows_100": 0.95}
    missing = variants_json([result(Variant("ours"), [1], [], [])], [], [1, 100], 10, "lr")
    assert missing["servers"][0]["rows_100"]["throughput_mean"] is None
    assert math.isnan(result(Variant("ours"), [], [], []).csv_rows_per_s(10))
