"""A container engine for the tests: docker where one runs, else podman (tools/containers/engine.sh
sets it up), the project's images built on a local base, and containers that are always removed.

No registry can be reached here: the images are built on a Debian base made locally
(tools/containers/base-image.sh) and passed as the Dockerfile's PYTHON_IMAGE. Both the base and the
layers are cached by the engine: a second build with the same pins takes seconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.support.paths import ROOT

IMAGE = "mlops-api-predictor"
LOCAL_BASE = "localhost/predictor-python:3.11-bookworm"
BUILD_SECONDS = 1800


@functools.cache
def engine() -> str | None:
    """The engine that can run containers here, or None."""
    for name in ("docker", "podman"):
        if shutil.which(name):
            probe = subprocess.run([name, "info"], capture_output=True, timeout=60)
            if probe.returncode == 0:
                return name
    return None


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [engine() or "podman", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@functools.cache
def images() -> tuple[str, str]:
    """IMAGE:serving and IMAGE:full, built (or found in the cache) on the local base."""
    env = None
    if engine() == "podman":
        subprocess.run([str(ROOT / "tools/containers/base-image.sh"), LOCAL_BASE], check=True, timeout=900)
        env = {"PYTHON_IMAGE": LOCAL_BASE}
    subprocess.run(
        [str(ROOT / "tools/containers/build.sh"), IMAGE],
        check=True,
        timeout=BUILD_SECONDS,
        env=os.environ | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return f"{IMAGE}:serving", f"{IMAGE}:full"


def inspect(image: str) -> dict[str, Any]:
    return json.loads(run("image", "inspect", image).stdout)[0]


def size_mib(image: str) -> float:
    return float(inspect(image)["Size"]) / 2**20


@dataclass
class Container:
    name: str

    def logs(self) -> str:
        done = run("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, Any]:
        return json.loads(run("inspect", self.name).stdout)[0]["State"]

    def started_at(self) -> float:
        """When the engine started the container's process (Unix time): what came before, creating
        the container, is the engine's time, not the image's."""
        stamp = self.state()["StartedAt"]  # e.g. 2026-12-07T12:49:05.300251159Z
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        moment = datetime.fromisoformat(whole).replace(tzinfo=UTC)
        return moment.timestamp() + float(f"0.{fraction or 0}")

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run("exec", self.name, *command, timeout=timeout, check=False)

    def healthcheck(self) -> bool:
        """The image's HEALTHCHECK, run now (podman runs it on demand without systemd's timers)."""
        if engine() == "podman":
            return run("healthcheck", "run", self.name, check=False).returncode == 0
        return self.state().get("Health", {}).get("Status") == "healthy"

    def signal(self, name: str) -> None:
        run("kill", "--signal", name, self.name)

    def wait(self, timeout: float) -> int:
        done = run("wait", self.name, timeout=timeout)
        return int(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def container(image: str, *options: str, command: tuple[str, ...] = ()) -> Iterator[Container]:
    """A detached container, removed afterwards whatever happened (its log printed on failure)."""
    name = f"predictor-test-{uuid.uuid4().hex[:10]}"
    run("run", "--detach", "--name", name, *options, image, *command)
    started = Container(name)
    try:
        yield started
    except BaseException:
        print(f"--- {name} log ---\n{started.logs()[-6000:]}")
        raise
    finally:
        run("rm", "--force", "--time", "5", name, check=False, timeout=60)


def one_shot(
    image: str, *options: str, command: tuple[str, ...], timeout: float
) -> subprocess.CompletedProcess[str]:
    """A container run to its end (removed), its output returned."""
    return run("run", "--rm", *options, image, *command, timeout=timeout, check=False)
