"""dvc repro as a user runs it, and dvc push / pull through a real S3 server (moto)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.support.paths import ROOT
from tests.support.pipeline import stage_env, write_params
from tests.support.servers import free_port, running

pytestmark = pytest.mark.slow
BUCKET = "predictor-dvc-test"


def sh(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def digests(folder: Path, *parts: str) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for part in parts
        for path in sorted((folder / part).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A clone of the project's pipeline files in a fresh git repo, reproduced once (with the project's
    params but smaller candidates: DVC's wiring, not the models, is under test)."""
    folder = tmp_path_factory.mktemp("repo")
    for name in ("app", "data/input", ".dvc"):
        shutil.copytree(
            ROOT / name,
            folder / name,
            ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp", "config.local"),
        )
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, folder / name)
    write_params(folder)
    env = stage_env(folder)
    sh(["git", "init", "-q"], folder, env)
    out = sh([str(Path(sys.executable).parent / "dvc"), "repro"], folder, env)
    assert "Running stage 'train'" in out and "champion:" in out
    yield folder, env


def dvc(repo: tuple[Path, dict[str, str]], *args: str) -> str:
    folder, env = repo
    return sh([str(Path(sys.executable).parent / "dvc"), *args], folder, env)


def test_second_repro_does_nothing(repo):
    out = dvc(repo, "repro")
    assert "Running stage" not in out
    assert "Data and pipelines are up to date" in out


def test_rebuild_from_scratch_gives_identical_metrics(repo):
    folder, _ = repo
    metrics = (folder / "data/evaluation/metrics.json").read_text()
    shutil.rmtree(folder / "models")
    shutil.rmtree(folder / "data/processed")
    # --force: really retrain rather than restore from DVC's run cache.
    out = dvc(repo, "repro", "--force")
    assert "Running stage 'train'" in out
    assert (folder / "data/evaluation/metrics.json").read_text() == metrics
    assert "accuracy" in dvc(repo, "metrics", "show")


@pytest.fixture
def s3() -> Iterator[str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).parent / "moto_server"
    with running([str(moto), "-H", "127.0.0.1", "-p", str(port)], ready_url=endpoint):
        yield endpoint


def test_push_and_pull_round_trip_through_s3(repo, s3, monkeypatch):
    folder, env = repo
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=s3,
        **{k.lower(): v for k, v in credentials.items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    env.update(credentials, DVC_REMOTE_URL=f"s3://{BUCKET}/store", DVC_S3_ENDPOINT_URL=s3)
    sh([sys.executable, "-m", "app.pipeline.remote"], folder, env)
    assert f"s3://{BUCKET}/store" in (folder / ".dvc/config.local").read_text()

    tracked = ("models", "data/processed", "data/raw")
    before = digests(folder, *tracked)
    assert "models/model.joblib" in before and "data/raw/dataset.csv" in before
    dvc(repo, "push")
    listed = boto3.client(
        "s3",
        endpoint_url=s3,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).list_objects_v2(Bucket=BUCKET, Prefix="store/")
    assert listed["KeyCount"] > 0

    shutil.rmtree(folder / ".dvc/cache")
    for part in tracked:
        shutil.rmtree(folder / part)
    dvc(repo, "pull")
    assert digests(folder, *tracked) == before
