"""Fixtures for the pipeline: a scratch project folder to run stages in, and the stage runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.pipeline import run_stage


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder to run stages in; the process works from it too."""
    (tmp_path / "data" / "input").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def stage() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_stage
