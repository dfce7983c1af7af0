"""`python -m app.cli models import` for POST /models/import: the model's own library (LightGBM, XGBoost,
CatBoost, onnx) loads in that process, never in the serving one.

The command gets the uploaded file's saved path, its own name (--upload-name) and --no-code (no
pickle, no MLflow model: they may run code as they load), and the API's settings through its
environment; it prints an ImportOutcome as a JSON line (--json). It runs without blocking the event
loop, in a process group of its own, which a timeout stops whole (the command may have started MLflow's
alias move).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.config import Settings, settings_environment
from app.core.messages import ImportOutcome

# Long enough for a large booster's conversion and MLflow's registry; a request-scoped bound still.
IMPORT_TIMEOUT_SECONDS = 600
COMMAND = [sys.executable, "-m", "app.cli", "models", "import"]
# What is kept of the command's stderr, for the message when it ends without an outcome.
STDERR_TAIL_BYTES = 64 * 1024
# The command's metrics would land beside the API's (prometheus-client's multiprocess files), and
# its gauges, left behind by a process that is gone, would be merged into the API's.
_NOT_INHERITED = ("PROMETHEUS_MULTIPROC_DIR",)


class ImportOptions(BaseModel):
    """The import's options, as the command line's `models import` takes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str | None = Field(default=None, min_length=1, max_length=200)  # the sample's ground truth
    name: str | None = Field(default=None, min_length=1, max_length=64)
    serve: bool = False
    force: bool = False  # with serve: skip the promotion gate
    tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # parity's

    @model_validator(mode="after")
    def _force_needs_serve(self) -> ImportOptions:
        if self.force and not self.serve:
            raise ValueError("force skips the promotion gate of serve: set both")
        return self


@dataclass(frozen=True)
class ImportFiles:
    model: Path  # the saved upload
    upload_name: str  # what the user called it: its format, by suffix, and the version's source
    sample: Path | None = None  # a saved CSV of real rows
    sample_name: str | None = None  # what the user called it, for messages


class ImportFailed(Exception):
    """The command ended without an outcome: it crashed, was killed, or refused its arguments."""


class ImportTimedOut(Exception):
    """The command ran past its timeout and was stopped."""


def command_line(files: ImportFiles, options: ImportOptions) -> list[str]:
    """The command, each option as --name=VALUE: a value that starts with '-' stays a value."""
    arguments = [str(files.model), f"--upload-name={files.upload_name}", "--no-code", "--json"]
    if files.sample is not None:
        arguments.append(f"--sample={files.sample}")
        if files.sample_name is not None:
            arguments.append(f"--sample-name={files.sample_name}")
    if options.target is not None:
        arguments.append(f"--target={options.target}")
    if options.name is not None:
        arguments.append(f"--name={options.name}")
    if options.tolerance is not None:
        arguments.append(f"--tolerance={options.tolerance!r}")
    if options.serve:
        arguments.append("--serve")
    if options.force:
        arguments.append("--force")
    return [*COMMAND, *arguments]


def command_environment(settings: Settings) -> dict[str, str]:
    """This process's environment, with its settings as they are here (a test's included)."""
    inherited = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    return inherited | settings_environment(settings)


async def run_import(files: ImportFiles, options: ImportOptions, settings: Settings) -> ImportOutcome:
    """Run the import; its outcome, imported or refused. Raises ImportFailed or ImportTimedOut."""
    timeout = IMPORT_TIMEOUT_SECONDS
    process = await anyio.open_process(
        command_line(files, options), env=command_environment(settings), start_new_session=True
    )
    stdout, stderr = bytearray(), bytearray()
    try:
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as group:
                assert process.stdout is not None and process.stderr is not None
                group.start_soon(_drain, process.stdout, stdout, None)
                group.start_soon(_drain, process.stderr, stderr, STDERR_TAIL_BYTES)
                await process.wait()
    except TimeoutError:
        raise ImportTimedOut(f"the import did not finish within {timeout} s and was stopped") from None
    finally:
        if process.returncode is None:  # timed out, or the request was cancelled
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        await process.aclose()
    outcome = _outcome(stdout.decode(errors="replace"))
    if outcome is None:
        said = stderr.decode(errors="replace").strip().splitlines()
        raise ImportFailed(
            f"the import command ended without an outcome (exit code {process.returncode})"
            + (f": {said[-1][:300]}" if said else "")
        )
    return outcome


def _outcome(stdout: str) -> ImportOutcome | None:
    """The last line that is an ImportOutcome: the command says `imported VERSION` after it."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValidationError):
                return ImportOutcome.model_validate_json(line)
    return None


async def _drain(stream: AsyncIterable[bytes], into: bytearray, keep: int | None) -> None:
    async for piece in stream:
        into += piece
        if keep is not None and len(into) > keep:
            del into[:-keep]
