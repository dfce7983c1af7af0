"""Generate the Grafana dashboards from code, so panels, ids and layout stay consistent.

    python dashboards/grafana/generate.py          # rewrite dashboards/grafana/dashboards/*.json
    python dashboards/grafana/generate.py --check  # exit 1 if a committed file differs

Every panel references the provisioned datasource by its fixed uid.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "predictor-prometheus"}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"
RATE = "$__rate_interval"


def quantile(q: float, histogram: str, by: str = "") -> str:
    """The q-quantile of a histogram, over all its series or per the labels `by` ("model_version, role")."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[{RATE}])))"


@dataclass(frozen=True)
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""
    extra: dict = field(default_factory=dict)
    new_row: bool = False  # start a row (a group of panels), even if this one fits beside the last


# The live quality gauges, merged over replicas (they all read the same database), by version and role.
BY_ROLE = "{{model_version}} ({{role}})"


def live(figure: str) -> str:
    return f"max by (model_version, role) (predictor_live_{figure})"


def live_quality_units(unit: str, threshold: str, bounds: tuple[float, float] | None = None) -> dict:
    """The panel's unit, and the series named `threshold` (an alert's setting) drawn dashed and red."""
    defaults: dict = {"unit": unit} | ({"min": bounds[0], "max": bounds[1]} if bounds else {})
    line = {
        "matcher": {"id": "byName", "options": threshold},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        ],
    }
    return {"fieldConfig": {"defaults": defaults, "overrides": [line]}}


# A canary's figures, by version and role (champion or canary), while it runs.
CANARY = "model_version, role"
CANARY_NO_DATA = "No data: no canary ran in the time range (POST /model/canary starts one)."


def canary_rate(counter: str) -> str:
    return f"sum by ({CANARY}) (rate(predictor_model_{counter}_total[{RATE}]))"


def on_right_axis(series: str, unit: str, defaults: dict) -> dict:
    """The series named `series` in its own unit, on the right axis."""
    moved = {
        "matcher": {"id": "byName", "options": series},
        "properties": [{"id": "unit", "value": unit}, {"id": "custom.axisPlacement", "value": "right"}],
    }
    return {"fieldConfig": {"defaults": defaults, "overrides": [moved]}}


# A 0/1 gauge as a stat: "down" on red, "up" on green.
UP_DOWN = {
    "fieldConfig": {
        "defaults": {
            "unit": "none",
            "mappings": [
                {
                    "type": "value",
                    "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}},
                }
            ],
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
            },
        },
        "overrides": [],
    },
    "options": {"colorMode": "background", "graphMode": "none"},
}


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int, height: int) -> dict:
    body = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if panel.kind == "timeseries"
        else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }
    body.update(panel.extra)
    return body


def render(dashboard: Dashboard) -> dict:
    panels, x, y, row_height = [], 0, 0, 8
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        height = 5 if panel.kind == "stat" else row_height
        if x + panel.width > 24 or (panel.new_row and x > 0):  # wrap to the next row
            x, y = 0, y + row_height
        panels.append(_panel_json(panel, panel_id, x, y, height))
        x += panel.width
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["predictor"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


DASHBOARDS = [
    Dashboard(
        uid="predictor-service",
        title="Predictor / Service",
        description="Traffic, errors, latency and concurrency of the prediction API.",
        panels=[
            Panel(
                "Request rate by route",
                [(f"sum by (route) (rate(predictor_http_requests_total[{RATE}]))", "{{route}}")],
                unit="reqps",
            ),
            Panel(
                "Responses by status",
                [(f"sum by (status) (rate(predictor_http_requests_total[{RATE}]))", "{{status}}")],
                unit="reqps",
            ),
            Panel(
                "5xx error ratio", [("job:predictor_http_5xx_ratio:rate5m", "5xx ratio")], unit="percentunit"
            ),
            Panel(
                "Latency p50 / p95 / p99",
                [
                    ("job:predictor_http_request_duration_seconds:p50_5m", "p50"),
                    ("job:predictor_http_request_duration_seconds:p95_5m", "p95"),
                    ("job:predictor_http_request_duration_seconds:p99_5m", "p99"),
                ],
                unit="s",
            ),
            Panel("Requests in flight", [("sum(predictor_http_requests_in_flight)", "in flight")]),
            Panel("API up", [('up{job="predictor-api"}', "{{instance}}")], kind="stat", width=6),
        ],
    ),
    Dashboard(
        uid="predictor-model",
        title="Predictor / Model",
        description="What the model predicts, how fast, how right (live quality), and which version serves.",
        panels=[
            Panel(
                "Predictions per label",
                [(f"sum by (label) (rate(predictor_predictions_total[{RATE}]))", "{{label}}")],
                unit="reqps",
            ),
            Panel(
                "Rows per request (p50 / p95)",
                [
                    (
                        quantile(0.5, "predictor_prediction_rows"),
                        "p50",
                    ),
                    (
                        quantile(0.95, "predictor_prediction_rows"),
                        "p95",
                    ),
                ],
            ),
            Panel(
                "Inference latency p50 / p99",
                [
                    (
                        quantile(0.5, "predictor_inference_duration_seconds"),
                        "p50",
                    ),
                    (
                        quantile(0.99, "predictor_inference_duration_seconds"),
                        "p99",
                    ),
                ],
                unit="s",
            ),
            Panel(
                "Reloads by result",
                [("sum by (result) (increase(predictor_model_reloads_total[1h]))", "{{result}}")],
            ),
            Panel(
                "Serving version",
                [("max by (version, name) (predictor_model_info)", "{{name}} {{version}}")],
                kind="stat",
                width=8,
                extra={"options": {"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}}},
            ),
            Panel("Model loaded", [("min(predictor_model_loaded)", "loaded")], kind="stat", width=8),
            Panel(
                "Model age",
                [("time() - max(predictor_model_trained_timestamp_seconds)", "age")],
                unit="s",
                kind="stat",
                width=8,
            ),
            Panel(
                "Live quality: accuracy and macro-F1 by version",
                [
                    (live("accuracy"), f"accuracy {BY_ROLE}"),
                    (live("macro_f1"), f"macro-F1 {BY_ROLE}"),
                    ("max by (model_version) (predictor_expected_accuracy)", "expected {{model_version}}"),
                    ("max(predictor_live_accuracy_min)", "LIVE_ACCURACY_MIN"),
                ],
                description="On the labelled predictions (POST /feedback) of the last "
                "LIVE_QUALITY_WINDOW_HOURS, of the served answers and a shadow challenger's. The expected "
                "accuracy is an estimate that needs no labels: the mean top probability of recent answers. "
                "The dashed line is LiveQualityLow's threshold.",
                extra=live_quality_units("percentunit", "LIVE_ACCURACY_MIN", bounds=(0, 1)),
            ),
            Panel(
                "Live quality: MAE / RMSE by version",
                [
                    (live("mae"), f"MAE {BY_ROLE}"),
                    (live("rmse"), f"RMSE {BY_ROLE}"),
                    # +Inf while LIVE_MAE_MAX is unset: no line then.
                    ("max(predictor_live_mae_max) < +Inf", "LIVE_MAE_MAX"),
                ],
                description="A regression's errors on the labelled predictions of the last "
                "LIVE_QUALITY_WINDOW_HOURS. The dashed line is LiveQualityLow's (LIVE_MAE_MAX, when set).",
                extra=live_quality_units("short", "LIVE_MAE_MAX"),
            ),
            Panel(
                "Live quality: labelled predictions",
                [
                    (live("labelled"), BY_ROLE),
                    ("max(predictor_live_min_labels)", "LIVE_QUALITY_MIN_LABELS"),
                ],
                description="Ground truth received, per version and role; LiveQualityLow waits for "
                "LIVE_QUALITY_MIN_LABELS of them.",
                extra=live_quality_units("short", "LIVE_QUALITY_MIN_LABELS"),
            ),
            Panel(
                "Canary: traffic split by role",
                [
                    (canary_rate("requests"), BY_ROLE),
                    ("max(predictor_canary_percent)", "canary share"),
                ],
                unit="reqps",
                new_row=True,
                description="Requests answered per second by the champion and the canary while a canary "
                "runs, and the share of requests the canary is set to answer now (right axis; 0 when "
                f"none runs). {CANARY_NO_DATA}",
                extra=on_right_axis("canary share", "percent", {"unit": "reqps", "min": 0}),
            ),
            Panel(
                "Canary: error ratio by role",
                [
                    (
                        f"{canary_rate('errors')} / {canary_rate('requests')}"
                        f" or {canary_rate('requests')} * 0",
                        BY_ROLE,
                    )
                ],
                unit="percentunit",
                description="The share of each version's requests answered 5xx or whose model call failed, "
                f"while a canary runs: what the errors guard judges. {CANARY_NO_DATA}",
            ),
            Panel(
                "Canary: latency p99 by role",
                [(quantile(0.99, "predictor_model_request_seconds", by=CANARY), BY_ROLE)],
                unit="s",
                description="The whole request's p99 latency for the champion and the canary while a canary "
                f"runs: the latency guard compares the canary's with the champion's. {CANARY_NO_DATA}",
            ),
            Panel(
                "Canary: guards breached and rollbacks",
                [
                    ("max by (guard) (predictor_canary_guard_breached)", "breached: {{guard}}"),
                    (
                        "sum by (reason) (increase(predictor_canary_rollbacks_total[1h]))",
                        "rollbacks in 1h: {{reason}}",
                    ),
                ],
                description="1 while a guard (errors, latency, quality, drift) is breached on a replica; the "
                "automatic rollbacks of the last hour by reason, each of which fires CanaryRolledBack. "
                "GET /model/canary gives the last decision's figures.",
                extra={
                    "fieldConfig": {
                        "defaults": {"unit": "short", "min": 0, "custom": {"lineInterpolation": "stepAfter"}},
                        "overrides": [],
                    }
                },
            ),
        ],
    ),
    Dashboard(
        uid="predictor-security",
        title="Predictor / Security",
        description="Logins, tokens and refusals: a brute-force attempt shows here first.",
        panels=[
            Panel(
                "Authentication failures by reason",
                [(f"sum by (reason) (rate(predictor_auth_failures_total[{RATE}]))", "{{reason}}")],
                unit="reqps",
            ),
            Panel(
                "Tokens issued",
                [(f"sum(rate(predictor_tokens_issued_total[{RATE}]))", "tokens/s")],
                unit="reqps",
            ),
            Panel(
                "Lockouts (last hour)",
                [('sum(increase(predictor_auth_failures_total{reason="locked"}[1h]))', "locked")],
                kind="stat",
                width=6,
            ),
            Panel(
                "OpenID Connect issuer",
                [("min by (issuer) (predictor_oidc_issuer_up)", "{{issuer}}")],
                kind="stat",
                width=6,
                description="Whether every replica's last fetch of the issuer's keys (OIDC_ISSUER) "
                "succeeded; OidcIssuerUnreachable names the replica after 10 minutes down. "
                "No data: no issuer is configured.",
                extra=UP_DOWN,
            ),
            Panel(
                "401 / 403 / 429 responses",
                [
                    (
                        "sum by (status) (rate(predictor_http_requests_total"
                        f'{{status=~"401|403|429"}}[{RATE}]))',
                        "{{status}}",
                    )
                ],
                unit="reqps",
            ),
        ],
    ),
    Dashboard(
        uid="predictor-drift",
        title="Predictor / Drift",
        description="How far recent inputs and predictions are from the training data "
        "(PSI: > 0.1 shift, > 0.2 drift).",
        panels=[
            Panel(
                "Feature PSI",
                [("max by (feature) (predictor_feature_psi)", "{{feature}}")],
                width=24,
                extra={
                    "fieldConfig": {
                        "defaults": {
                            "unit": "short",
                            "thresholds": {
                                "mode": "absolute",
                                "steps": [
                                    {"color": "green", "value": None},
                                    {"color": "orange", "value": 0.1},
                                    {"color": "red", "value": 0.2},
                                ],
                            },
                        },
                        "overrides": [],
                    }
                },
            ),
            Panel("Prediction PSI", [("max(predictor_prediction_psi)", "predicted labels")]),
            Panel(
                "Predicted label share",
                [
                    (
                        f"sum by (label) (rate(predictor_predictions_total[{RATE}]))"
                        f" / scalar(sum(rate(predictor_predictions_total[{RATE}])))",
                        "{{label}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Validation errors by field",
                [(f"sum by (field) (rate(predictor_validation_errors_total[{RATE}]))", "{{field}}")],
                unit="reqps",
            ),
        ],
    ),
]


def generate() -> dict[str, str]:
    return {f"{d.uid}.json": json.dumps(render(d), indent=2) + "\n" for d in DASHBOARDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is out of date")
    args = parser.parse_args()
    files = generate()
    if args.check:
        stale = [
            n for n, text in files.items() if not (OUT_DIR / n).is_file() or (OUT_DIR / n).read_text() != text
        ]
        if stale:
            sys.exit(f"out of date: {', '.join(stale)}; run python dashboards/grafana/generate.py")
        return
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(files)} dashboards to {OUT_DIR}")


if __name__ == "__main__":
    main()
