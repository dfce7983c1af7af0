"""A retraining worker refuses to start where it could not run a job (no params file), saying why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.core.config import Settings, missing_project
from tests.support.paths import ROOT


def test_a_worker_started_outside_the_project_refuses_saying_what_it_needs(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRAIN_PARAMS"}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "app.worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"worker: {tmp_path / 'params.yaml'} not found: start the worker in the project folder "
        "(where params.yaml is), or set TRAIN_PARAMS to the project's params file"
    )
    assert not (tmp_path / "app.db").exists()  # refused before touching the database


def test_train_params_found_by_name_or_by_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert missing_project(Settings(train_params=Path("params.yaml"))) is not None
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert missing_project(Settings(train_params=Path("params.yaml"))) is None
    assert missing_project(Settings(train_params=tmp_path / "params.yaml")) is None
    assert "elsewhere/params.yaml not found" in str(
        missing_project(Settings(train_params=Path("elsewhere/params.yaml")))
    )
