"""Render the shipped Prometheus and Alertmanager configs for a run on 127.0.0.1.

The files in dashboards/ name docker-compose services; a local run (`make stack`, the tests) needs
the same configs pointed at local ports, a token file, and (for tests) short alert durations.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "dashboards" / "prometheus"
ALERTMANAGER_FILE = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"
RULE_FILES = ("recording.yml", "alerts.yml")
WEBHOOK_PLACEHOLDER = "${ALERT_WEBHOOK_URL}"


def render_prometheus(
    out: Path,
    *,
    api: str | list[str] = "api:8000",  # one API, or every replica's host:port
    alertmanager: str = "alertmanager:9093",
    prometheus: str = "localhost:9090",
    token: str = "metrics-token",  # noqa: S107 (a placeholder the caller replaces)
    interval: str | None = None,
    alert_for: str | None = None,
) -> Path:
    """Write prometheus.yml, its rules and the metrics token file into `out`; returns the config's path."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (out / "rules").mkdir(parents=True, exist_ok=True)
    for name in RULE_FILES:
        rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / name).read_text())
        if alert_for is not None:
            for group in rules["groups"]:
                group["interval"] = interval or group.get("interval", "15s")
                for rule in group["rules"]:
                    if "alert" in rule:
                        rule["for"] = alert_for
        (out / "rules" / name).write_text(yaml.safe_dump(rules, sort_keys=False))
    token_file = out / "metrics_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    if interval:
        config["global"]["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
    for job in config["scrape_configs"]:
        if job["job_name"] == "predictor-api":
            job["static_configs"][0]["targets"] = [api] if isinstance(api, str) else list(api)
            job["authorization"]["credentials_file"] = str(token_file)
        elif job["job_name"] == "prometheus":
            job["static_configs"][0]["targets"] = [prometheus]
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def render_alertmanager(out: Path, webhook_url: str) -> Path:
    """Alertmanager does not expand variables: write the config with the webhook's URL filled in."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "alertmanager.yml"
    path.write_text(ALERTMANAGER_FILE.read_text().replace(WEBHOOK_PLACEHOLDER, webhook_url))
    return path
