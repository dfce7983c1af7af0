"""MLflow's `champion` alias, moved through a subprocess (python -m app.pipeline.alias): the API and
the worker never import mlflow, and a tracking server that hangs costs a timeout, not a stuck thread."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

from pydantic import ValidationError

from app.core.artifacts import ModelMetadata
from app.core.messages import AliasOutcome

ALIAS_TIMEOUT_SECONDS = 60


def alias_outcome(metadata: ModelMetadata, status: Literal["skipped", "pending"]) -> AliasOutcome:
    """What can be said before moving the alias: skipped (the version was never registered in MLflow,
    whatever `status` asks), or `status`, naming the registry version."""
    registered = {
        "registered_model": metadata.registered_model,
        "registered_version": metadata.registered_version,
    }
    if not metadata.registered_model or not metadata.registered_version:
        reason = f"version {metadata.version} has no MLflow registry version"
        return AliasOutcome(status="skipped", reason=reason, **registered)
    return AliasOutcome(status=status, **registered)


def update_champion_alias(metadata: ModelMetadata) -> AliasOutcome:
    """Move MLflow's `champion` alias to this version, in a subprocess; says how it went, never raises."""
    before = alias_outcome(metadata, "pending")
    if before.status == "skipped" or not metadata.registered_model or not metadata.registered_version:
        return before
    command = [
        sys.executable,
        "-m",
        "app.pipeline.alias",
        "--model",
        metadata.registered_model,
        "--version",
        metadata.registered_version,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=ALIAS_TIMEOUT_SECONDS, check=False
        )
        outcome = AliasOutcome.model_validate_json(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        outcome = AliasOutcome(
            status="failed", reason=f"MLflow did not answer within {ALIAS_TIMEOUT_SECONDS} s"
        )
    except (ValidationError, IndexError):
        outcome = AliasOutcome(status="failed", reason="the alias update ended without an answer")
    return outcome.model_copy(
        update={"registered_model": before.registered_model, "registered_version": before.registered_version}
    )
