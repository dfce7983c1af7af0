"""The benchmark's pure helpers: bodies, wrk's report, ratios and the table. No load, no timing."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from bench.harness import (
    RESULT_MARKER,
    BenchError,
    Case,
    Comparison,
    LoadResult,
    forced_params,
    format_profile,
    format_table,
    mlflow_body,
    parse_wrk_report,
    predictor_body,
    results_document,
    sample_rows,
    summarize_profile,
    target_verdicts,
    wrk_command,
)
from bench.run import CHAMPIONS, LUA_SCRIPT, ROOT, code_version, export_commit

FEATURES = [
    {"name": "sepal_length", "type": "numeric", "min": 4.3, "max": 7.9},
    {"name": "petal_width", "type": "numeric", "min": 0.1, "max": 2.5},
    {"name": "city", "type": "categorical", "categories": ["lille", "lyon", "paris"]},
]

WRK_STDOUT = """Running 10s test @ http://127.0.0.1:8000/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.00ms    5.00ms  80.00ms   70.00%
  15000 requests in 10.00s, 3.00MB read
Requests/sec:   1500.00
Transfer/sec:    300.00KB
BENCH_RESULT {"requests": 15000, "duration_us": 10000000, "p50_us": 19500, "p90_us": 25000, \
"p99_us": 41250, "mean_us": 20000.5, "max_us": 80000, "non_200": 0, "connect_errors": 0, \
"read_errors": 0, "write_errors": 0, "timeouts": 0, "first_bad": ""}
"""


def load(throughput: float, p50: float, p99: float, non_200: int = 0) -> LoadResult:
    return LoadResult(
        requests=int(throughput * 10),
        duration_s=10.0,
        throughput=throughput,
        p50_ms=p50,
        p90_ms=p50,
        p99_ms=p99,
        mean_ms=p50,
        max_ms=p99,
        non_200=non_200,
        socket_errors=0,
    )


def test_forced_params_sets_the_champion_and_leaves_the_input_alone():
    params = {"seed": 1, "train": {"champion": None, "candidates": {"random_forest": {}, "svc": {}}}}
    forced = forced_params(params, "random_forest")
    assert forced["train"]["champion"] == "random_forest"
    assert forced["train"]["candidates"] == params["train"]["candidates"]
    assert params["train"]["champion"] is None


def test_forced_params_refuses_a_champion_that_is_not_a_candidate():
    with pytest.raises(BenchError, match=r"not in train\.candidates"):
        forced_params({"train": {"candidates": {"svc": {}}}}, "random_forest")
    # Per task, the bench's task (classification) is the list that counts.
    per_task = {"classification": {"svc": {}}, "regression": {"random_forest": {}}}
    with pytest.raises(BenchError, match=r"not in train\.candidates for classification \(listed: svc\)"):
        forced_params({"train": {"candidates": per_task}}, "random_forest")


@pytest.mark.parametrize("champion", CHAMPIONS)
def test_the_projects_params_can_force_each_benchmarked_champion(champion):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert forced_params(params, champion)["train"]["champion"] == champion


def test_sample_rows_are_valid_varied_and_deterministic():
    rows = sample_rows(FEATURES, 100)
    assert len(rows) == 100
    assert rows == sample_rows(FEATURES, 100)
    for row in rows:
        assert list(row) == ["sepal_length", "petal_width", "city"]
        assert 4.3 <= row["sepal_length"] <= 7.9
        assert 0.1 <= row["petal_width"] <= 2.5
        assert row["city"] in {"lille", "lyon", "paris"}
    assert len({row["sepal_length"] for row in rows}) > 50
    assert {row["city"] for row in rows} == {"lille", "lyon", "paris"}


def test_bodies_carry_the_same_rows_in_each_servers_format():
    rows = sample_rows(FEATURES, 3)
    ours = json.loads(predictor_body(rows))
    assert ours == {"instances": rows}
    columns = [f["name"] for f in FEATURES]
    theirs = json.loads(mlflow_body(rows, columns))
    assert theirs["dataframe_split"]["columns"] == columns
    assert theirs["dataframe_split"]["data"] == [[r[c] for c in columns] for r in rows]


def test_parse_wrk_report_reads_the_lua_scripts_line():
    result = parse_wrk_report(WRK_STDOUT)
    assert result.requests == 15000
    assert result.throughput == pytest.approx(1500.0)
    assert result.p50_ms == pytest.approx(19.5)
    assert result.p99_ms == pytest.approx(41.25)
    assert result.max_ms == pytest.approx(80.0)
    assert not result.failed


def test_parse_wrk_report_counts_failures():
    bad = WRK_STDOUT.replace('"non_200": 0', '"non_200": 3').replace('"timeouts": 0', '"timeouts": 2')
    result = parse_wrk_report(bad.replace('"first_bad": ""', '"first_bad": "401 {\\"detail\\": \\"no\\"}"'))
    assert result.non_200 == 3
    assert result.socket_errors == 2
    assert result.first_bad.startswith("401")
    assert result.failed


def test_parse_wrk_report_without_the_line_says_so():
    with pytest.raises(BenchError, match="no BENCH_RESULT line"):
        parse_wrk_report("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_prints_what_the_parser_reads():
    script = LUA_SCRIPT.read_text()
    assert RESULT_MARKER.strip() in script
    for key in ("requests", "duration_us", "p50_us", "p99_us", "non_200", "timeouts", "first_bad"):
        assert f'"{key}"' in script


def test_wrk_command_runs_the_script_against_the_url():
    command = wrk_command(
        "http://127.0.0.1:9/predict", "/tmp/body.json", "bench/post.lua", concurrency=32, duration_s=2.4
    )
    assert command[0] == "wrk"
    assert "-c32" in command
    assert "-d2s" in command
    assert command[command.index("-s") + 1] == "bench/post.lua"
    assert command[-3:] == ["http://127.0.0.1:9/predict", "--", "/tmp/body.json"]


def test_ratios_verdicts_and_table():
    fast = Comparison(Case("logistic_regression", 1, 32), load(1200, 20, 40), load(300, 90, 200))
    slow = Comparison(Case("random_forest", 1, 32), load(100, 250, 900), load(80, 300, 600))
    other = Comparison(Case("random_forest", 100, 1), load(50, 15, 30), load(40, 20, 35))
    assert fast.throughput_ratio == pytest.approx(4.0)
    assert fast.p99_ratio == pytest.approx(0.2)

    verdicts = {
        v["target"]: v["met"]
        for v in target_verdicts([fast, slow, other], {"random_forest": 3.1}, {"random_forest": 120.0})
    }
    assert verdicts == {
        "logistic_regression: throughput >= 3x mlflow (1 row, c=32)": True,
        "logistic_regression: p99 below mlflow's (1 row, c=32)": True,
        "random_forest: throughput >= 1.5x mlflow (1 row, c=32)": False,
        "random_forest: p99 below mlflow's (1 row, c=32)": False,
        "random_forest: our cold start <= 1 s": False,
        "random_forest: RSS per worker after the load <= 150 MiB": True,
    }

    table = format_table([fast, slow, other]).splitlines()
    assert len(table) == 5  # header, rule, three rows
    assert "ours req/s" in table[0]
    assert table[2].split()[:6] == ["logistic_regression", "1", "32", "1,200", "300", "4.00"]


def test_results_document_is_json(tmp_path: Path):
    comparison = Comparison(Case("random_forest", 1, 32), load(200, 50, 90), load(80, 300, 600))
    cold = {"ours": {"random_forest": 0.9}, "mlflow": {"random_forest": 8.5}}
    document = results_document([comparison], cold, {"duration_s": 10}, {"random_forest": 110.0})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    again = json.loads(path.read_text())
    assert again["results"][0]["throughput_ratio"] == pytest.approx(2.5)
    assert again["results"][0]["ours"]["p99_ms"] == 90
    assert again["cold_start_s"]["ours"]["random_forest"] == 0.9
    assert again["rss_mib"] == {"random_forest": 110.0}
    assert all(v["met"] for v in again["targets"])


def test_summarize_profile_ranks_functions_and_skips_idle_workers():
    collapsed = "\n".join(
        [
            "main (app/serve.py:10);predict (app/api/routes/predict.py:120);predict_proba (sklearn/x.py:5) 6",
            "main (app/serve.py:10);predict (app/api/routes/predict.py:121) 2",
            "main (app/serve.py:10);log (app/observability/logging.py:90) 2",
            "Thread._bootstrap (threading.py:1002);Condition.wait (threading.py:327) 50",
        ]
    )
    summary = summarize_profile(collapsed, top=3)
    assert summary[0] == (1.0, 0.0, "main (app/serve.py)")
    assert summary[1] == (pytest.approx(0.8), pytest.approx(0.2), "predict (app/api/routes/predict.py)")
    assert summary[2] == (pytest.approx(0.6), pytest.approx(0.6), "predict_proba (sklearn/x.py)")
    assert "predict_proba (sklearn/x.py)" in format_profile(summary)
    assert summarize_profile("") == []


def test_export_commit_copies_the_app_and_params_of_a_commit(tmp_path: Path):
    commit = export_commit("HEAD", tmp_path / "src")
    assert len(commit) == 40
    assert (tmp_path / "src" / "app" / "serve.py").is_file()
    assert (tmp_path / "src" / "params.yaml").is_file()
    assert list((tmp_path / "src" / "app").glob("__pycache__/serve.*.pyc"))
    assert code_version(commit) == {
        "git_commit": commit,
        "app_changed": False,
        "source": "git archive of the commit",
    }
    with pytest.raises(BenchError, match="not a commit"):
        export_commit("no-such-ref-anywhere", tmp_path / "other")


def test_cpu_per_request_is_the_servers_cpu_time_over_its_requests():
    run = dataclasses.replace(load(throughput=200, p50=1, p99=2), server_cpu_s=1.0)  # 2,000 requests
    assert run.cpu_us_per_request == 500
    assert math.isnan(load(throughput=200, p50=1, p99=2).cpu_us_per_request)  # not read
