"""The whole suite's set-up: what tests need besides Python (tests/support/needs.py), passwords
hashed at the cheapest cost, and the long suites spread over pytest-xdist's workers."""

from __future__ import annotations

import os

import pytest

from tests.support import scheduling
from tests.support.needs import pytest_addoption, pytest_configure  # noqa: F401 - the hooks, as this suite's
from tests.support.tokens import CHEAP_PASSWORD_HASHING

# Every app, CLI and server the suite starts (they inherit the environment) hashes passwords at
# argon2's minimum: a login costs microseconds instead of ~0.2 s. tests/core/test_config.py and
# test_security.py check the production cost.
os.environ.update(CHEAP_PASSWORD_HASHING)

# The scratch databases (database_url, postgres_url, empty_database_url), for every folder.
pytest_plugins = ["tests.support.databases"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scheduling.order(config, items)
