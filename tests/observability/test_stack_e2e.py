"""The end-to-end proof: the API, the real Prometheus and the real Alertmanager on 127.0.0.1.

Prometheus scrapes the API every second with the project's own rules (only the `for:` durations
shortened); a short generated load must give every Grafana panel data, shifted inputs must fire
FeatureDrift, and stopping the API must bring APIDown to Alertmanager.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest

from tests.support.paths import ROOT
from tests.support.pipeline import run_stage, write_params
from tests.support.servers import api_server, free_ports, running, wait_until
from tests.support.tokens import ADMIN, login
from tools.devstack.configs import render_alertmanager, render_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

METRICS_TOKEN = "e2e-metrics-token"
GRAFANA = ROOT / "dashboards" / "grafana" / "dashboards"
# Panels only a regression gives data to (and LIVE_MAE_MAX, unset here).
REGRESSION_PANELS = {"Live quality: MAE / RMSE by version"}
# Panels of a feature this stack does not turn on: the issuer's gauge has a series only with OIDC_ISSUER;
# the canary's per-version series (predictor_model_requests_total, ...) exist only while a canary runs,
# and no canary is started here.
FEATURE_PANELS = {
    "OpenID Connect issuer",
    "Canary: traffic split by role",
    "Canary: error ratio by role",
    "Canary: latency p99 by role",
    "Canary: guards breached and rollbacks",
}


class _Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alerts"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    (folder / "data" / "input").mkdir(parents=True)
    write_params(folder, train={"candidates": {"logistic_regression": {}, "decision_tree": {}}})
    run_stage("prepare", folder)
    run_stage("train", folder)
    return folder / "models"


def prom_query(prometheus: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def firing(prometheus: str, alertname: str) -> list[dict]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def send_load(
    api: str, headers: dict[str, str], rows: np.ndarray, names: list[str], batch: int = 10
) -> list[dict]:
    """The predictions (each with its prediction_id)."""
    predictions = []
    with httpx.Client(base_url=api, headers=headers, timeout=10) as client:
        for start in range(0, len(rows), batch):
            instances = [
                dict(zip(names, map(float, row), strict=True)) for row in rows[start : start + batch]
            ]
            response = client.post("/predict", json={"instances": instances})
            assert response.status_code == 200, response.text
            predictions += response.json()["predictions"]
    return predictions


def test_panels_have_data_drift_fires_and_api_down_reaches_alertmanager(tmp_path: Path, model_dir: Path):
    prometheus_bin, alertmanager_bin = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    if not (prometheus_bin and alertmanager_bin):
        pytest.fail("prometheus and prometheus-alertmanager are not installed: `make test` installs them")
    api_port, prom_port, am_port = free_ports(3)
    api, prometheus, alertmanager = (f"http://127.0.0.1:{p}" for p in (api_port, prom_port, am_port))
    prom_config = render_prometheus(
        tmp_path / "prometheus",
        api=f"127.0.0.1:{api_port}",
        alertmanager=f"127.0.0.1:{am_port}",
        prometheus=f"127.0.0.1:{prom_port}",
        token=METRICS_TOKEN,
        interval="1s",
        alert_for="3s",
    )

    with contextlib.ExitStack() as stack:
        hook = stack.enter_context(webhook())
        am_config = render_alertmanager(tmp_path / "alertmanager", hook)
        stack.enter_context(
            running(
                [alertmanager_bin, f"--config.file={am_config}", f"--storage.path={tmp_path / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                ready_url=f"{alertmanager}/-/ready", log=tmp_path / "alertmanager.log",
            )
        )  # fmt: skip
        settings = {
            "METRICS_TOKEN": METRICS_TOKEN,
            "DRIFT_WINDOW": "200",
            "DRIFT_MIN_ROWS": "50",
            "LIVE_QUALITY_REFRESH_SECONDS": "1",
        }
        served = stack.enter_context(
            api_server(tmp_path, model_dir, port=api_port, ready="/health", **settings)
        )
        prometheus_args = [
            f"--config.file={prom_config}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        ]
        stack.enter_context(
            running(
                [prometheus_bin, *prometheus_args],
                ready_url=f"{prometheus}/-/ready",
                log=tmp_path / "prometheus.log",
            )
        )

        # /metrics is protected; Prometheus has the token.
        assert httpx.get(f"{api}/metrics", timeout=5).status_code == 401
        wait_until(lambda: prom_query(prometheus, 'up{job="predictor-api"} == 1') != [], 30, "API target up")

        # A short, varied load: good logins and bad ones, valid and invalid rows, in-distribution inputs.
        headers = login(api, *ADMIN)
        for _ in range(3):
            httpx.post(f"{api}/token", data={"username": "mallory", "password": "guess"}, timeout=10)
        httpx.post(f"{api}/predict", json={"instances": [{"sepal_length": "x"}]}, headers=headers, timeout=10)
        httpx.post(f"{api}/predict", json={"instances": []}, timeout=10)  # 401
        httpx.post(f"{api}/model/reload", headers=headers, timeout=30)
        features = json.loads((model_dir / "model.json").read_text())["features"]
        names = [f["name"] for f in features]
        reference = np.loadtxt(model_dir.parent / "data/processed/train.csv", delimiter=",", skiprows=1,
                               usecols=range(len(names)))  # fmt: skip
        answered = send_load(
            api, headers, reference[np.random.default_rng(1).integers(0, len(reference), 200)], names
        )
        # Ground truth for some of them (any label: the live quality panels need labels, not good ones).
        truths = [{"prediction_id": p["prediction_id"], "label": p["label"]} for p in answered[:20]]
        sent = httpx.post(f"{api}/feedback", json={"items": truths}, headers=headers, timeout=10)
        assert sent.status_code == 200 and sent.json()["recorded"] == 20, sent.text

        # Then inputs unlike the training data: every feature pushed to its top.
        shifted = np.array([[f["max"] * 0.99 for f in features]] * 200)
        send_load(api, headers, shifted, names)

        wait_until(lambda: firing(prometheus, "FeatureDrift") != [], 60, "FeatureDrift firing")
        drifted = {a["labels"]["feature"] for a in firing(prometheus, "FeatureDrift")}
        assert drifted <= set(names) and drifted

        # Every Grafana panel's query returns data (a regression's panels aside: this model classifies).
        wait_until(lambda: prom_query(prometheus, "predictor_live_labelled > 0") != [], 30, "live quality")
        empty = []
        for path in sorted(GRAFANA.glob("*.json")):
            for panel in json.loads(path.read_text())["panels"]:
                if panel["title"] in REGRESSION_PANELS | FEATURE_PANELS:
                    continue
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", "1m")
                    if not prom_query(prometheus, expr):
                        empty.append(f"{path.stem} / {panel['title']}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        # Stop the API: APIDown must reach Alertmanager.
        served.process.terminate()
        served.process.wait(timeout=15)

        def api_down_in_alertmanager() -> bool:
            alerts = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
            return any(a["labels"]["alertname"] == "APIDown" for a in alerts)

        wait_until(api_down_in_alertmanager, 60, "APIDown in Alertmanager")
        alerts = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        down = next(a for a in alerts if a["labels"]["alertname"] == "APIDown")
        assert down["labels"]["severity"] == "critical"
        # Critical APIDown inhibits the service's warnings (FeatureDrift among them).
        wait_until(
            lambda: all(
                a["status"]["inhibitedBy"]
                for a in httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
                if a["labels"]["alertname"] == "FeatureDrift"
            ),
            30,
            "FeatureDrift inhibited",
        )
        # And the webhook receiver was called with the critical alert.
        wait_until(
            lambda: any(
                a["labels"]["alertname"] == "APIDown" for m in _Webhook.received for a in m["alerts"]
            ),
            40,
            "webhook notified",
        )
