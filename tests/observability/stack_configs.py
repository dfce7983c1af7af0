"""The Prometheus and Alertmanager renderers (in app.devstack.configs, shared with `make stack`),
plus the promtool test layout, for the observability tests."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    "copy_rule_tests",
    "render_alertmanager",
    "render_prometheus",
]


def copy_rule_tests(out: Path) -> Path:
    """promtool resolves rule_files relative to the test file: keep the shipped layout."""
    shutil.copytree(PROMETHEUS_DIR, out / "prometheus")
    return out / "prometheus" / "tests" / "alerts_test.yml"
