"""The Dockerfile, read without a Docker engine: what it copies exists, and the usual hygiene."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        joined.append(pending + line)
        pending = ""
    result = []
    for line in filter(str.strip, joined):
        keyword, _, arguments = line.strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


INSTRUCTIONS = instructions()


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in INSTRUCTIONS:
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, arguments))
    return found


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage named `name` (FROM ... AS name)."""
    (found,) = [each for each in stages() if each[0][1].split()[-1] == name]
    return found


def image_settings(name: str) -> list[tuple[str, str]]:
    """What an image's final stage and the stages it is built FROM set, the first stage first."""
    chain = [stage(name)]
    while (parent := chain[0][0][1].split()[0]) != "${PYTHON_IMAGE}":
        chain.insert(0, stage(parent))
    return [instruction for each in chain for instruction in each]


def copies() -> list[list[str]]:
    """The sources of every COPY from the build context (not --from another stage)."""
    result = []
    for keyword, arguments in INSTRUCTIONS:
        if keyword != "COPY":
            continue
        words = shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        result.append(paths[:-1])
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    parts = Path(path).parts
    for pattern in dockerignore():
        pattern = pattern.removeprefix("**/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
        if any(fnmatch.fnmatch(part, pattern) for part in parts) and "/" not in pattern:
            return True
    return False


def base_image() -> str:
    args = {}
    for keyword, arguments in INSTRUCTIONS:
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            args[name] = value
    first_from = next(arguments for keyword, arguments in INSTRUCTIONS if keyword == "FROM")
    image = first_from.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)


def test_multi_stage_from_one_pinned_slim_python_311():
    assert len(stages()) >= 2
    image = base_image()
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image
    froms = [arguments.split()[0] for keyword, arguments in INSTRUCTIONS if keyword == "FROM"]
    names = {arguments.split()[-1] for keyword, arguments in INSTRUCTIONS if keyword == "FROM"}
    # Every stage starts from the one base, or from another stage of this file.
    assert set(froms) <= {"${PYTHON_IMAGE}"} | names
    assert stages()[-1][0][1].split()[-1] == "full", "the default target is the full image"


def test_every_copy_source_exists_and_is_in_the_build_context():
    sources = [source for group in copies() for source in group]
    needed = {"pyproject.toml", "requirements.lock", "app", "dvc.yaml", "params.yaml", ".dvc/config"}
    assert needed <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", ".git", "mlruns", "models", "artifacts", "data/raw", "data/processed", ".env",
                 ".dvc/cache", ".dvc/config.local", "app/__pycache__"):  # fmt: skip
        assert ignored(path), f"{path} would be sent to the build"


def test_the_image_ships_the_service_and_not_the_development_tools():
    """tools/ (make stack), tests/ and bench/ stay out: nothing copies them, nor the whole context."""
    sources = [Path(source) for group in copies() for source in group]
    assert Path(".") not in sources
    for kept_out in ("tools", "tests", "bench"):
        assert ignored(kept_out), f"{kept_out} would be sent to the build"
        assert not any(source.parts[0] == kept_out for source in sources), f"COPY {kept_out}"


def test_dependencies_are_installed_before_the_code_is_copied():
    deps = stages()[0]
    first_copy = next(arguments for keyword, arguments in deps if keyword == "COPY")
    assert shlex.split(first_copy)[:-1] == ["pyproject.toml", "requirements.lock"]
    install = next(args for keyword, args in deps if keyword == "RUN" and "pip install" in args)
    assert "requirements.lock" in install
    assert not any(keyword == "COPY" and "app" in shlex.split(arguments) for keyword, arguments in deps)


def listed_by(name: str, tmp_path: Path) -> list[str]:
    """Run a stage's own one-liner on pyproject.toml: the requirements it lists."""
    install = next(args for keyword, args in stage(name) if keyword == "RUN" and "tomllib" in args)
    snippet = install.split("&&")[0]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["sh", "-c", snippet], cwd=tmp_path, env=env, check=True)
    written = snippet.rsplit(">", 1)[1].strip()
    return (tmp_path / written).read_text().split()


def test_the_requirement_list_is_serving_plus_train_and_ui(tmp_path):
    """The serving image's list is pyproject's dependencies; the full one's adds train and ui; dev
    stays out of both."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert listed_by("serving-deps", tmp_path) == project["dependencies"]
    listed = project["dependencies"] + listed_by("full-deps", tmp_path)
    assert listed == project["dependencies"] + extras["train"] + extras["ui"]
    serving = " ".join(project["dependencies"])
    for training in ("mlflow", "dvc", "scikit-learn", "pandas", "lightgbm", "xgboost", "catboost"):
        assert training not in serving, f"{training} in the serving image"
    # Test-only tools stay out (httpx is in both: the UI's client, and the tests' TestClient).
    dev_only = set(extras["dev"]) - set(project["dependencies"] + extras["train"] + extras["ui"])
    assert dev_only and not set(listed) & dev_only
    # Every one of them is pinned in the lock the image is built with.
    locked = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    for requirement in listed:
        name = re.split(r"[\[=<>]", requirement)[0].lower().replace("_", "-")
        assert name in locked, f"{name} is not in requirements.lock"


IMAGES = ["serving", "full"]


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_user(image: str):
    users = [arguments for keyword, arguments in image_settings(image) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("image", IMAGES)
def test_has_a_healthcheck_that_needs_no_curl(image: str):
    checks = [arguments for keyword, arguments in image_settings(image) if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].split("CMD", 1)[1]
    assert "python" in command and "/health" in command
    assert "curl" not in command and "wget" not in command


@pytest.mark.parametrize("image", IMAGES)
def test_default_command_serves_the_api(image: str):
    commands = [arguments for keyword, arguments in image_settings(image) if keyword == "CMD"]
    assert commands[-1] == '["python", "-m", "app.serve"]'


def runtime_env(image: str = "serving") -> dict[str, str]:
    env = {}
    for keyword, arguments in image_settings(image):
        if keyword == "ENV" and "PIP_" not in arguments:
            env.update(pair.partition("=")[::2] for pair in shlex.split(arguments))
    return env


def test_the_model_store_cache_and_jobs_are_folders_the_app_user_owns():
    """The defaults for one container; compose and the chart point MODEL_STORE_URL at S3."""
    env = runtime_env()
    assert "VERSIONS_DIR" not in env
    assert env["MODEL_STORE_URL"] == "/srv/versions"
    assert (env["MODEL_CACHE_DIR"], env["JOBS_DIR"]) == ("/srv/cache", "/srv/jobs")
    folders = {env[name] for name in ("MODEL_DIR", "MODEL_STORE_URL", "MODEL_CACHE_DIR", "JOBS_DIR")}
    run = next(args for keyword, args in image_settings("serving") if keyword == "RUN" and "chown" in args)
    created = run.split("mkdir -p", 1)[1].split("&&")[0].split()
    owner, *owned = run.split("chown", 1)[1].split()
    assert owner == "app:app"
    assert folders <= set(created) and folders <= set(owned)
