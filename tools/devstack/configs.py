"""Render the shipped Prometheus, Alertmanager and nginx configs for a run on 127.0.0.1.

The files in dashboards/ and deploy/nginx/ name docker-compose services; a local run (`make stack`,
the tests) needs the same configs pointed at local ports, a token file, and (for tests) short alert
durations.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "dashboards" / "prometheus"
ALERTMANAGER_FILE = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"
NGINX_FILE = ROOT / "deploy" / "nginx" / "predictor.conf"
RULE_FILES = ("recording.yml", "alerts.yml")
WEBHOOK_PLACEHOLDER = "${ALERT_WEBHOOK_URL}"
# The lines of deploy/nginx/predictor.conf that name compose's network; everything else runs as is.
# The resolver goes with the comment above it.
NGINX_RESOLVER = re.compile(r"(^#.*\n)*^resolver .*;\n\n?", re.MULTILINE)
NGINX_SERVERS = re.compile(r"^(?P<indent> +)server api-\d+:8000 resolve;\n", re.MULTILINE)
NGINX_LISTEN = re.compile(r"^(?P<indent> +)listen 8000;$", re.MULTILINE)
NGINX_ACCESS_LOG = re.compile(r"access_log /var/log/nginx/access\.log ")


def render_prometheus(
    out: Path,
    *,
    api: str | list[str] | None = None,  # one API, or every replica's host:port; None: as shipped
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
            if api is not None:
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


def render_nginx(out: Path, *, listen: str, replicas: list[str], access_log: Path) -> Path:
    """deploy/nginx/predictor.conf on 127.0.0.1, in a top-level config of its own; returns its path.

    The replicas are addresses (no DNS to follow: Debian's nginx predates `resolve`), and every path
    nginx writes (pid, temp files, logs) is inside `out`, so it runs without root or /var.
    """
    shipped = NGINX_FILE.read_text()
    text, resolvers = NGINX_RESOLVER.subn("", shipped)
    servers = list(NGINX_SERVERS.finditer(text))
    listens = len(NGINX_LISTEN.findall(text))
    logs = len(NGINX_ACCESS_LOG.findall(text))
    if (resolvers, bool(servers), listens, logs) != (1, True, 1, 1):
        raise ValueError(
            f"{NGINX_FILE}: no longer the shape render_nginx rewrites (resolver, servers, listen)"
        )
    indent = servers[0]["indent"]
    upstream = "".join(f"{indent}server {address};\n" for address in replicas)
    text = text[: servers[0].start()] + upstream + text[servers[-1].end() :]
    text = NGINX_LISTEN.sub(lambda m: f"{m['indent']}listen {listen};", text)
    text = NGINX_ACCESS_LOG.sub(f"access_log {access_log} ", text)
    temp = out / "temp"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / name).mkdir(parents=True, exist_ok=True)
    (out / "predictor.conf").write_text(text)
    # As root, nginx hands its workers to `nobody`, who may not reach this folder: keep root's.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = (
        "# Rendered by tools/devstack (make stack) from deploy/nginx/predictor.conf: do not edit.\n"
        f"{user}daemon off;\n"
        "worker_processes 1;\n"
        f"pid {out / 'nginx.pid'};\n"
        "error_log stderr notice;\n"
        "events {\n    worker_connections 256;\n}\n"
        "http {\n"
        "    default_type application/octet-stream;\n"
        f"    client_body_temp_path {temp / 'body'};\n"
        f"    proxy_temp_path {temp / 'proxy'};\n"
        f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
        f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
        f"    scgi_temp_path {temp / 'scgi'};\n"
        f"    include {out / 'predictor.conf'};\n"
        "}\n"
    )
    path = out / "nginx.conf"
    path.write_text(main)
    return path
