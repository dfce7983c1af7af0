"""The Prometheus and Alertmanager renderers (in app.devstack.configs, shared with `make stack`),
plus the promtool test layout, for the observability tests."""

from __future__ import annotations

from app.devstack.configs import (
    ALERTMANAGER_FILE,
    PROMETHEUS_DIR,
    ROOT,
    RULE_FILES,
    render_alertmanager,
    render_prometheus,
)

__all__ = [
    "ALERTMANAGER_FILE",
    "PROMETHEUS_DIR",
    "ROOT",
    "RULE_FILES",
    "render_alertmanager",
    "render_prometheus",
]
