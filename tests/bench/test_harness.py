"""The benchmark's pure helpers: bodies, wrk's report, ratios, tables and verdicts. No load, no timing."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from bench.harness import (
    BASELINE,
    BASELINE_TARGETS,
    BENTOML_VERSION,
    PEERS,
    RESULT_MARKER,
    SHARED_WITH_BENTOML,
    BenchError,
    Case,
    CeilingResult,
    Comparison,
    LoadResult,
    bentoml_requirements,
    ceiling_json,
    forced_params,
    format_ceiling,
    format_cold_starts,
    format_profile,
    format_table,
    format_verdicts,
    mlflow_body,
    parse_peers,
    parse_wrk_report,
    predictor_body,
    request_body,
    results_document,
    sample_rows,
    summarize_profile,
    target_verdicts,
    wrk_command,
)
from bench.run import CHAMPIONS, LUA_SCRIPT, PEER_ROUTES, ROOT, code_version, export_commit, parse_args

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


def test_each_server_gets_its_own_body_and_bentoml_takes_ours():
    rows = sample_rows(FEATURES, 2)
    columns = [f["name"] for f in FEATURES]
    assert request_body("ours", rows, columns) == predictor_body(rows)
    # bench/bento_service.py's parameter is named `instances`: BentoML reads the same JSON as ours.
    assert request_body("bentoml", rows, columns) == predictor_body(rows)
    assert request_body("ceiling", rows, columns) == predictor_body(rows)
    assert request_body("mlflow", rows, columns) == mlflow_body(rows, columns)
    assert set(PEER_ROUTES) == set(PEERS)


def test_parse_peers_keeps_the_tables_order_and_refuses_unknown_names():
    assert parse_peers("bentoml, MLflow") == ["mlflow", "bentoml"]
    assert parse_peers("mlflow,mlflow") == ["mlflow"]
    assert parse_peers("") == []
    with pytest.raises(BenchError, match=r"unknown peer.*torchserve"):
        parse_peers("mlflow,torchserve")


def test_bench_peers_and_ceiling_knobs(monkeypatch):
    monkeypatch.delenv("BENCH_PEERS", raising=False)
    monkeypatch.delenv("BENCH_CEILING", raising=False)
    args = parse_args([])
    assert args.peers == ["mlflow", "bentoml"]
    assert args.ceiling is True
    monkeypatch.setenv("BENCH_PEERS", "mlflow")
    monkeypatch.setenv("BENCH_CEILING", "0")
    args = parse_args([])
    assert args.peers == ["mlflow"]
    assert args.ceiling is False
    assert parse_args(["--peers", "", "--ceiling"]).peers == []
    with pytest.raises(SystemExit):
        parse_args(["--peers", "seldon"])


def test_bentoml_gets_the_projects_versions_of_what_unpickling_needs():
    installed = {name: f"1.{i}.0" for i, name in enumerate(SHARED_WITH_BENTOML)} | {"mlflow": "3.0"}
    pins = bentoml_requirements(installed)
    assert pins[0] == f"bentoml=={BENTOML_VERSION}"
    assert BENTOML_VERSION.startswith("1.4.")
    assert "scikit-learn==1.0.0" in pins
    assert len(pins) == 1 + len(SHARED_WITH_BENTOML)
    with pytest.raises(BenchError, match="lacks scikit-learn"):
        bentoml_requirements({"numpy": "2.0", "scipy": "1.0", "joblib": "1.0"})


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
    # Without a body file it GETs (/health).
    assert 'wrk.format("GET"' in script


def test_wrk_command_runs_the_script_against_the_url():
    command = wrk_command(
        "http://127.0.0.1:9/predict", "/tmp/body.json", "bench/post.lua", concurrency=32, duration_s=2.4
    )
    assert command[0] == "wrk"
    assert "-c32" in command
    assert "-d2s" in command
    assert command[command.index("-s") + 1] == "bench/post.lua"
    assert command[-3:] == ["http://127.0.0.1:9/predict", "--", "/tmp/body.json"]
    get = wrk_command("http://127.0.0.1:9/health", None, "bench/post.lua", concurrency=32, duration_s=3)
    assert get[-1] == "http://127.0.0.1:9/health"
    assert "--" not in get


def test_ratios_verdicts_and_table():
    fast = Comparison(Case("logistic_regression", 1, 32), load(1200, 20, 40), {"mlflow": load(300, 90, 200)})
    slow = Comparison(Case("random_forest", 1, 32), load(100, 250, 900), {"mlflow": load(80, 300, 600)})
    other = Comparison(Case("random_forest", 100, 1), load(50, 15, 30), {"mlflow": load(40, 20, 35)})
    assert fast.throughput_ratio("mlflow") == pytest.approx(4.0)
    assert fast.p99_ratio("mlflow") == pytest.approx(0.2)

    verdicts = {
        v["target"]: v["met"]
        for v in target_verdicts([fast, slow, other], {"random_forest": 3.1}, {"random_forest": 120.0})
    }
    assert verdicts == {
        "logistic_regression: our p99 <= 4x our p50 (1 row, c=32)": True,
        "random_forest: our p99 <= 4x our p50 (1 row, c=32)": True,
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
    assert table[2].split()[:3] == ["logistic_regression", "1", "32"]
    assert "1,200" in table[2].split()
    assert "4.00" in table[2].split()


def test_bentoml_is_a_third_column_set_with_its_own_targets_on_1_and_100_rows():
    peers = {"mlflow": load(300, 90, 200), "bentoml": load(500, 60, 150)}
    one = Comparison(Case("random_forest", 1, 32), load(1600, 20, 40), peers)
    hundred = Comparison(
        Case("random_forest", 100, 32),
        load(400, 80, 160),
        {"mlflow": peers["mlflow"], "bentoml": load(200, 150, 300)},
    )
    calm = Comparison(Case("random_forest", 100, 1), load(50, 15, 30), peers)  # c=1: no target
    svc = Comparison(Case("svc", 1, 32), load(50, 15, 30), peers)  # no target for svc
    verdicts = {
        v["target"]: (v["met"], v["measured"])
        for v in target_verdicts([one, hundred, calm, svc], {})
        if "our p50" not in v["target"]
    }
    assert verdicts == {
        "random_forest: throughput >= 1.5x mlflow (1 row, c=32)": (True, "5.33x"),
        "random_forest: p99 below mlflow's (1 row, c=32)": (True, "40.0 ms vs 200.0 ms"),
        "random_forest: throughput >= 3x bentoml (1 row, c=32)": (True, "3.20x"),
        "random_forest: p99 below bentoml's (1 row, c=32)": (True, "40.0 ms vs 150.0 ms"),
        "random_forest: throughput >= 3x bentoml (100 rows, c=32)": (False, "2.00x"),
        "random_forest: p99 below bentoml's (100 rows, c=32)": (True, "160.0 ms vs 300.0 ms"),
    }

    header, rule, first, *_ = format_table([one, hundred]).splitlines()
    assert header.split()[:9] == ["champion", "rows", "conc", "ours", "req/s", "ours", "p50", "ours", "p99"]
    assert header.index("mlflow req/s") < header.index("bentoml req/s")
    assert len(rule.split()) == 6 + 5 * 2  # ours' three, then five per peer
    cells = first.split()
    # ... 1,600 ours, then mlflow's 300 and 5.33x, then bentoml's 500 and 3.20x
    assert cells[cells.index("300") + 1] == "5.33"
    assert cells[cells.index("500") + 1] == "3.20"


def test_our_tail_at_one_row_and_c32_is_at_most_4x_our_median():
    calm = Comparison(Case("svc", 1, 32), load(2000, 15, 60), {})
    spiky = Comparison(Case("random_forest", 1, 32), load(2000, 15, 61), {})
    batch = Comparison(Case("random_forest", 100, 32), load(900, 30, 400), {})  # no target at 100 rows
    verdicts = {v["target"]: (v["met"], v["measured"]) for v in target_verdicts([calm, spiky, batch], {})}
    assert verdicts == {
        "svc: our p99 <= 4x our p50 (1 row, c=32)": (True, "4.0x (60.0 ms vs 15.0 ms)"),
        "random_forest: our p99 <= 4x our p50 (1 row, c=32)": (False, "4.1x (61.0 ms vs 15.0 ms)"),
    }


def test_a_table_of_ours_alone_when_no_peer_runs():
    alone = Comparison(Case("svc", 1, 1), load(100, 5, 9), {})
    header = format_table([alone]).splitlines()[0]
    assert header.split() == ["champion", "rows", "conc", "ours", "req/s", "ours", "p50", "ours", "p99"]
    assert target_verdicts([alone], {}) == []


def baseline_comparisons() -> list[Comparison]:
    """Two champions at c=32 and a c=1 case, each with the baseline beside ours and mlflow."""
    mlflow = {"mlflow": load(100, 300, 600)}
    return [
        Comparison(Case("logistic_regression", 1, 32), load(1500, 20, 40), mlflow, load(500, 60, 120)),
        Comparison(Case("logistic_regression", 100, 32), load(600, 50, 90), mlflow, load(300, 100, 200)),
        Comparison(Case("svc", 1, 32), load(900, 30, 60), mlflow, load(400, 70, 140)),
        Comparison(Case("svc", 100, 32), load(800, 40, 80), mlflow, load(200, 150, 300)),
        Comparison(Case("svc", 100, 1), load(50, 15, 30), mlflow, load(10, 80, 100)),  # c=1: no target
    ]


def test_baseline_targets_per_champion_at_c32_on_1_and_100_rows():
    assert BASELINE_TARGETS == {1: 2.0, 100: 3.0}
    verdicts = target_verdicts(baseline_comparisons(), {}, baseline_commit="a96f0f7c0ffee")
    ours_over_baseline = {
        v["target"]: (v["met"], v["measured"]) for v in verdicts if "baseline" in v["target"]
    }
    assert ours_over_baseline == {
        "logistic_regression: throughput >= 2x baseline a96f0f7 (1 row, c=32)": (True, "3.00x"),
        "logistic_regression: throughput >= 3x baseline a96f0f7 (100 rows, c=32)": (False, "2.00x"),
        "svc: throughput >= 2x baseline a96f0f7 (1 row, c=32)": (True, "2.25x"),
        "svc: throughput >= 3x baseline a96f0f7 (100 rows, c=32)": (True, "4.00x"),
    }
    # The peers' targets stand as they were: the baseline is no peer of theirs.
    assert "logistic_regression: throughput >= 3x mlflow (1 row, c=32)" in {v["target"] for v in verdicts}
    assert not any("p99 below baseline" in v["target"] for v in verdicts)
    # Exactly at the target is met; without the commit the verdict names the baseline alone.
    exact = Comparison(Case("random_forest", 100, 32), load(300, 50, 90), {}, load(100, 100, 200))
    assert target_verdicts([exact], {}) == [
        {
            "target": "random_forest: throughput >= 3x baseline (100 rows, c=32)",
            "measured": "3.00x",
            "met": True,
        }
    ]
    lines = format_verdicts(verdicts).splitlines()
    assert "MISSED  logistic_regression: throughput >= 3x baseline a96f0f7 (100 rows, c=32): 2.00x" in lines
    assert "met     svc: throughput >= 3x baseline a96f0f7 (100 rows, c=32): 4.00x" in lines


def test_no_baseline_no_baseline_target_nor_column():
    without = [dataclasses.replace(c, baseline=None) for c in baseline_comparisons()]
    assert not any("baseline" in v["target"] for v in target_verdicts(without, {}, baseline_commit="a96f0f7"))
    table = format_table(without, baseline_commit="a96f0f7")
    assert "baseline" not in table
    assert table == format_table(without)
    assert without[0].others == without[0].peers


def test_the_baseline_is_a_column_set_right_after_ours_with_its_commit_on_a_line_above():
    comparisons = baseline_comparisons()
    assert comparisons[0].throughput_ratio(BASELINE) == pytest.approx(3.0)
    assert comparisons[0].p99_ratio(BASELINE) == pytest.approx(40 / 120)
    assert list(comparisons[0].others) == ["baseline", "mlflow"]
    note, header, rule, first, *rest = format_table(comparisons, "a96f0f7c0ffee").splitlines()
    assert note == "baseline: commit a96f0f7's app/ and params.yaml, trained and served as ours are"
    assert header.index("ours p99") < header.index("baseline req/s") < header.index("mlflow req/s")
    assert len(rule.split()) == 6 + 5 * 2  # ours' three, then five for the baseline and five for mlflow
    assert len(rest) == 4
    cells = first.split()
    # ... ours' 1,500, then the baseline's 500 and 3.00x (p99 0.33x), then mlflow's 100 and 15.00x
    assert cells[cells.index("500") + 1] == "3.00"
    assert cells[cells.index("120.00") + 2] == "0.33"
    assert cells[cells.index("100") + 1] == "15.00"
    assert format_table(comparisons).splitlines()[0].startswith("baseline: another commit's app/")


def test_results_document_holds_the_baseline_its_ratios_and_targets():
    cold = {"ours": {"svc": 0.9}, "baseline": {"svc": 1.4}, "mlflow": {"svc": 5.0}}
    settings = {"baseline": {"ref": "a96f0f7", "git_commit": "a96f0f7c0ffee"}}
    document = json.loads(
        json.dumps(results_document(baseline_comparisons(), cold, settings, baseline_commit="a96f0f7c0ffee"))
    )
    result = document["results"][0]
    assert list(result) == ["champion", "rows", "concurrency", "ours", "baseline", "mlflow", "ratios"]
    assert result["baseline"]["throughput"] == 500
    assert result["ratios"]["baseline"] == {"throughput": 3.0, "p50": 0.333, "p99": 0.333}
    assert result["ratios"]["mlflow"]["throughput"] == 15.0
    assert document["cold_start_s"]["baseline"] == {"svc": 1.4}
    met = {v["target"]: v["met"] for v in document["targets"]}
    assert met["svc: throughput >= 3x baseline a96f0f7 (100 rows, c=32)"] is True
    # Our cold start alone has a target; the baseline's is reported beside it.
    assert [t for t in met if "cold start" in t] == ["svc: our cold start <= 1 s"]
    assert format_cold_starts(cold) == "cold start svc: ours 0.90 s, baseline 1.40 s, mlflow 5.00 s"


def test_bench_baseline_knob(monkeypatch):
    monkeypatch.delenv("BENCH_BASELINE", raising=False)
    assert parse_args([]).baseline is None
    monkeypatch.setenv("BENCH_BASELINE", "")
    assert parse_args([]).baseline is None
    monkeypatch.setenv("BENCH_BASELINE", "a96f0f7")
    assert parse_args([]).baseline == "a96f0f7"
    assert parse_args(["--baseline", "HEAD~3"]).baseline == "HEAD~3"


def test_cold_starts_line_per_champion_with_every_peer():
    cold = {"ours": {"svc": 0.9}, "mlflow": {"svc": 5.0}, "bentoml": {"svc": 3.25}}
    assert format_cold_starts(cold) == "cold start svc: ours 0.90 s, mlflow 5.00 s, bentoml 3.25 s"
    assert format_cold_starts({"ours": {"svc": 0.9}}) == "cold start svc: ours 0.90 s"


def _cpu(run: LoadResult, seconds: float) -> LoadResult:
    return dataclasses.replace(run, server_cpu_s=seconds)


def ceiling_results() -> list[CeilingResult]:
    predict = CeilingResult(
        "predict",
        [_cpu(load(1000, 30, 100), 10.0), _cpu(load(1400, 20, 80), 10.0)],  # 24,000 requests, 20 s
        [load(4000, 8, 15), load(4400, 7, 13)],
    )
    health = CeilingResult("health", [load(5000, 6, 12)], [load(6000, 5, 10)])
    return [predict, health]


def test_ceiling_ratio_is_the_mean_throughput_of_each_and_has_its_own_targets():
    predict, health = ceiling_results()
    assert predict.ours_throughput == pytest.approx(1200)
    assert predict.ceiling_throughput == pytest.approx(4200)
    assert predict.ratio == pytest.approx(1200 / 4200)
    assert health.ratio == pytest.approx(5 / 6)
    verdicts = {
        v["target"]: (v["met"], v["measured"]) for v in target_verdicts([], {}, None, [predict, health])
    }
    assert verdicts == {
        "one-row POST /predict: throughput >= 0.5x the bare FastAPI app's (c=32)": (False, "0.29x"),
        "GET /health: throughput >= 0.8x the bare FastAPI app's (c=32)": (True, "0.83x"),
    }
    text = format_ceiling([predict, health], "logistic_regression").splitlines()
    assert len(text) == 2
    assert "ours 1,200 req/s, bare FastAPI 4,200: 0.29x (target >= 0.5x)" in text[0]
    assert "mean of 2 alternating runs" in text[0]
    assert "833 µs against nan µs" in text[0]  # 20 s of CPU over 24,000 requests; the other not read
    assert text[1].startswith("ceiling, GET /health")

    summary = ceiling_json([predict, health], "logistic_regression")
    assert summary["predict"]["ours_over_ceiling"] == pytest.approx(0.286)
    assert summary["predict"]["target"] == 0.5
    assert summary["health"]["throughput_ceiling"] == 6000
    assert summary["rounds"] == 2
    assert summary["predict"]["cpu_us_per_request_ours"] == pytest.approx(833.3)
    assert summary["health"]["cpu_us_per_request_ours"] is None  # not read: neither zero nor NaN


def test_verdicts_print_as_met_or_missed():
    lines = format_verdicts(
        [{"target": "a", "measured": "1x", "met": True}, {"target": "b", "measured": "2x", "met": False}]
    ).splitlines()
    assert lines == ["met     a: 1x", "MISSED  b: 2x"]


def test_results_document_is_json(tmp_path: Path):
    peers = {"mlflow": load(80, 300, 600), "bentoml": load(100, 200, 400)}
    comparison = Comparison(Case("random_forest", 1, 32), load(400, 50, 90), peers)
    cold = {
        "ours": {"random_forest": 0.9},
        "mlflow": {"random_forest": 8.5},
        "bentoml": {"random_forest": 4.0},
    }
    document = results_document(
        [comparison],
        cold,
        {"duration_s": 10},
        {"random_forest": 110.0},
        ceiling_results(),
        "logistic_regression",
    )
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    again = json.loads(path.read_text())
    result = again["results"][0]
    assert result["ratios"]["mlflow"]["throughput"] == pytest.approx(5.0)
    assert result["ratios"]["bentoml"] == {"throughput": 4.0, "p50": 0.25, "p99": 0.225}
    assert result["ours"]["p99_ms"] == 90
    assert result["bentoml"]["throughput"] == 100
    assert again["cold_start_s"]["bentoml"]["random_forest"] == 4.0
    assert again["rss_mib"] == {"random_forest": 110.0}
    assert again["ceiling"]["champion"] == "logistic_regression"
    assert again["ceiling"]["predict"]["throughput_ours"] == 1200
    met = {v["target"]: v["met"] for v in again["targets"]}
    assert met["random_forest: throughput >= 3x bentoml (1 row, c=32)"] is True
    assert met["one-row POST /predict: throughput >= 0.5x the bare FastAPI app's (c=32)"] is False
    assert "ceiling" not in results_document([comparison], cold, {}, None)


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
    with pytest.raises(BenchError, match=r"^--ref no-such-ref-anywhere: not a commit"):
        export_commit("no-such-ref-anywhere", tmp_path / "other")
    with pytest.raises(BenchError, match=r"^--baseline no-such-ref: not a commit"):
        export_commit("no-such-ref", tmp_path / "other", "--baseline")


def test_cpu_per_request_is_the_servers_cpu_time_over_its_requests():
    run = dataclasses.replace(load(throughput=200, p50=1, p99=2), server_cpu_s=1.0)  # 2,000 requests
    assert run.cpu_us_per_request == 500
    assert math.isnan(load(throughput=200, p50=1, p99=2).cpu_us_per_request)  # not read
