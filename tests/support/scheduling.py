"""How the suite is spread over pytest-xdist's workers (make test: -n auto --dist loadgroup).

Each module is one unit of work, so its module-scoped servers and models are made once, on one
worker; a package that shares one deployment (tests/faults) is one unit too. The units are handed
out longest first (the classic longest-processing-time rule): the long end-to-end suites start at
once on different workers, and the short ones fill the gaps at the end.
"""

from __future__ import annotations

import pytest

# Seconds each long unit took on its own on this 2-core machine (make test's --durations, summed),
# rounded. Only the order matters: a suite that grows past its neighbours moves up by itself once
# its figure is updated; one not listed is assumed to cost SECONDS_PER_TEST per test.
LONG_UNITS: dict[str, float] = {
    "tests/api/test_predict_csv.py": 167,
    "tests/pipeline/test_stages.py": 150,
    "tests/pipeline/test_onnx_export.py": 108,
    "tests/api/test_fuzz.py": 98,
    "tests/deploy/test_devstack.py": 84,
    "tests/api/test_train.py": 66,
    "tests/deploy/test_replicas.py": 60,
    "tests/pipeline/test_dvc.py": 56,
    "tests/faults/": 53,
    "tests/observability/test_stack_e2e.py": 42,
    "tests/api/test_train_feedback.py": 34,
    "tests/api/test_request_path_imports.py": 30,
    "tests/ui/test_app.py": 22,
}
SECONDS_PER_TEST = 0.2
# Packages whose modules share one package-scoped fixture (a whole deployment): one unit each.
SHARED_PACKAGES = ("tests/faults/",)


def unit_of(item: pytest.Item) -> str:
    path = item.nodeid.split("::", 1)[0]
    return next((package for package in SHARED_PACKAGES if path.startswith(package)), path)


def order(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group each item with its unit (xdist_group) and put the longest units first."""
    # xdist tells its workers (which collect and run) of --dist loadgroup by this flag alone.
    if not getattr(config.option, "loadgroup", False):
        return  # one process: the order written in the files
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(unit_of(item), []).append(item)
    for unit, members in units.items():
        for item in members:
            if item.get_closest_marker("xdist_group") is None:
                item.add_marker(pytest.mark.xdist_group(unit))

    def cost(unit: str) -> float:
        return LONG_UNITS.get(unit, SECONDS_PER_TEST * len(units[unit]))

    # sorted() is stable: within a unit, and between units of equal cost, collection order holds.
    items[:] = [item for unit in sorted(units, key=cost, reverse=True) for item in units[unit]]
