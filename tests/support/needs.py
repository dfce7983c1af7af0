"""What a test needs besides Python, as a marker: `@pytest.mark.redis`, `@pytest.mark.nginx`, ...

Run by hand on a machine without the tool, such a test is skipped with the command that gets it.
`make test` installs every tool and passes --fail-on-skip, so a skipped test fails the run: CI can
never go green by skipping.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.support.containers import engine as container_engine
from tests.support.paths import ROOT
from tests.support.postgres import server_url
from tests.support.redis_db import REDIS_ADDRESS


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def _postgres() -> bool:
    url = server_url()
    return _answers((url.host or "127.0.0.1", url.port or 5432))


def _on_path(*names: str) -> Callable[[], bool]:
    # Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
    return lambda: all(shutil.which(n) or shutil.which(n, path="/usr/sbin") for n in names)


@dataclass(frozen=True)
class Need:
    available: Callable[[], bool]
    what: str
    how: str


NEEDS: dict[str, Need] = {
    "postgres": Need(
        _postgres,
        "a PostgreSQL server at TEST_DATABASE_URL (or 127.0.0.1:5432, trust auth, database test)",
        "start PostgreSQL, or deselect with -m 'not postgres'",
    ),
    "redis": Need(lambda: _answers(REDIS_ADDRESS), "a Redis server at 127.0.0.1:6379", "start redis-server"),
    "prometheus": Need(
        _on_path("prometheus", "promtool", "prometheus-alertmanager", "amtool"),
        "Prometheus and Alertmanager (Debian's packages)",
        "make obs-tools",
    ),
    "nginx": Need(_on_path("nginx"), "nginx (Debian's package)", "make stack-tools"),
    "chromium": Need(_on_path("chromium"), "Chromium (Debian's package)", "make ui-tools"),
    "oidc": Need(
        lambda: _on_path("node")() and (ROOT / "tests/support/oidc/node_modules/.installed").exists(),
        "Node.js and npm's oidc-provider in tests/support/oidc",
        "make oidc-tools",
    ),
    "checkov": Need(
        lambda: (ROOT / ".venv-chart" / "bin" / "checkov").exists(),
        "checkov in .venv-chart",
        "make chart-tools",
    ),
    "containers": Need(
        lambda: container_engine() is not None,
        "a container engine that runs containers here (docker, or Debian's podman)",
        "make container-tools",
    ),
    "root": Need(
        lambda: os.geteuid() == 0, "root, to mount a tmpfs (a full disk)", "run the suite as root, as CI does"
    ),
}


@functools.cache
def missing(marker: str) -> str | None:
    """Why a test marked `marker` cannot run here, or None when it can."""
    need = NEEDS[marker]
    if need.available():
        return None
    return f"needs {need.what}: {need.how}"


class NeedsPlugin:
    """Skips what cannot run here; with --fail-on-skip, fails the session if anything was skipped."""

    def __init__(self, config: pytest.Config) -> None:
        self.fail_on_skip: bool = config.getoption("fail_on_skip")
        self.skipped: list[str] = []
        # Under xdist, the controller sees every worker's reports: the verdict is given there.
        self.judge = not hasattr(config, "workerinput")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        for mark in item.iter_markers():
            if mark.name in NEEDS and (reason := missing(mark.name)):
                pytest.skip(reason)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.judge and self.fail_on_skip and self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.judge and self.fail_on_skip and self.skipped:
            terminalreporter.section("--fail-on-skip: skipped tests fail the run", red=True)
            for nodeid in self.skipped:
                terminalreporter.write_line(nodeid)


# Hooks: tests/conftest.py takes them from here; a suite elsewhere can load this as `-p tests.support.needs`.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="fail the run when any test was skipped (make test: every tool is installed)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, need in NEEDS.items():
        config.addinivalue_line("markers", f"{name}: needs {need.what} ({need.how})")
    config.pluginmanager.register(NeedsPlugin(config), "needs-plugin")
