"""The shipped Prometheus, Alertmanager and Grafana files, checked with the real tools."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from tools.devstack.configs import (
    ALERTMANAGER_FILE,
    PROMETHEUS_DIR,
    ROOT,
    render_alertmanager,
    render_prometheus,
)

GRAFANA = ROOT / "dashboards" / "grafana"
ALERTS = yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())["groups"][0]["rules"]
ALERT_NAMES = [rule["alert"] for rule in ALERTS]
EXPECTED_ALERTS = {
    "APIDown", "HighErrorRate", "HighLatencyP95", "AuthFailureSpike", "ModelNotLoaded",
    "NoPredictions", "FeatureDrift", "PredictionDrift", "StaleModel",
    "ModelStoreUnreachable", "ModelCacheFull", "ReplicasDisagree",
    "RevocationStoreUnreachable", "RateLimitStoreUnreachable", "RefreshTokenReuse", "LiveQualityLow",
    "OidcIssuerUnreachable", "CanaryRolledBack",
}  # fmt: skip


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `make test` installs it "
            "(Debian packages prometheus, prometheus-alertmanager)"
        )
    return path


def run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.prometheus
def test_prometheus_config_is_valid(tmp_path: Path):
    out = run(tool("promtool"), "check", "config", str(render_prometheus(tmp_path)))
    assert "SUCCESS" in out


def test_shipped_config_scrapes_the_api_with_a_bearer_token_and_loads_the_rules():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"predictor-api", "prometheus"}
    assert jobs["predictor-api"]["authorization"]["type"] == "Bearer"
    assert config["rule_files"] == ["rules/recording.yml", "rules/alerts.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


@pytest.mark.prometheus
def test_rules_are_valid():
    out = run(tool("promtool"), "check", "rules", *map(str, sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))))
    assert "SUCCESS: 18 rules found" in out


@pytest.mark.prometheus
def test_alert_unit_tests_pass():
    out = run(tool("promtool"), "test", "rules", "tests/alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in out


def test_every_alert_is_complete_and_tested_firing_and_quiet():
    assert set(ALERT_NAMES) == EXPECTED_ALERTS
    for rule in ALERTS:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    cases = yaml.safe_load((PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text())["tests"]
    checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    for name in ALERT_NAMES:
        mine = [check for check in checks if check["alertname"] == name]
        assert any(check["exp_alerts"] for check in mine), f"{name} never tested firing"
        assert any(not check["exp_alerts"] for check in mine), f"{name} never tested quiet"


def test_every_alert_links_its_runbook_section():
    """runbook_url is a path from the repository's root plus the anchor of the alert's heading."""
    runbook = ROOT / "docs" / "operations.md"
    headings = {line[4:].strip() for line in runbook.read_text().splitlines() if line.startswith("### ")}
    for rule in ALERTS:
        name = rule["alert"]
        assert name in headings, f"docs/operations.md has no runbook section ### {name}"
        # An alert name is letters and digits, so its heading's anchor is the name in lower case.
        assert rule["annotations"].get("runbook_url") == f"docs/operations.md#{name.lower()}", name


@pytest.mark.prometheus
def test_alertmanager_config_is_valid(tmp_path: Path):
    assert "${ALERT_WEBHOOK_URL}" in ALERTMANAGER_FILE.read_text()
    out = run(tool("amtool"), "check-config", str(render_alertmanager(tmp_path, "http://127.0.0.1:9/hook")))
    assert "SUCCESS" in out


def test_alertmanager_routes_by_severity_and_inhibits_warnings():
    config = yaml.safe_load(ALERTMANAGER_FILE.read_text())
    matchers = [route["matchers"] for route in config["route"]["routes"]]
    assert ['severity="critical"'] in matchers and ['severity="warning"'] in matchers
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert inhibit["target_matchers"] == ['severity="warning"']


def dashboards() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))]


def test_dashboards_are_generated_from_code():
    generated = runpy.run_path(str(GRAFANA / "generate.py"))["generate"]()
    on_disk = {path.name: path.read_text() for path in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == generated, "run python dashboards/grafana/generate.py"
    assert {d["title"] for d in dashboards()} == {
        "Predictor / Service", "Predictor / Model", "Predictor / Security", "Predictor / Drift",
    }  # fmt: skip


def test_dashboard_panels_are_well_formed():
    uid = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0][
        "uid"
    ]
    for dashboard in dashboards():
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels), dashboard["title"]
        for panel in panels:
            assert panel["datasource"]["uid"] == uid
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            assert all(t["datasource"]["uid"] == uid for t in panel["targets"])
        for a, b in combinations(panels, 2):
            ga, gb = a["gridPos"], b["gridPos"]
            overlap_x = ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
            overlap_y = ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]
            assert not (overlap_x and overlap_y), f"{dashboard['title']}: {a['title']} overlaps {b['title']}"
            assert ga["x"] + ga["w"] <= 24
        assert "${DS_" not in json.dumps(dashboard)


@pytest.mark.prometheus
def test_dashboard_queries_parse(tmp_path: Path):
    """Every panel expression is valid PromQL: promtool parses each as a recording rule."""
    rules = [
        {"record": f"check:panel_{i}", "expr": target["expr"].replace("$__rate_interval", "1m")}
        for i, target in enumerate(t for d in dashboards() for p in d["panels"] for t in p["targets"])
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    run(tool("promtool"), "check", "rules", str(path))
