"""Point the MLflow registry's `champion` alias at a registered version (the API runs this after a swap).

    python -m app.pipeline.alias --model predictor --version 3

Prints one JSON line, an AliasOutcome (app/core/messages.py): updated, or failed with the reason; exits 0
either way, so the caller reports MLflow's state rather than failing what it already did.
"""

from __future__ import annotations

import argparse
import os

# Only tracking: this runs after every promotion and rollback, and the training modules are slow to import.
from app.core.messages import AliasOutcome
from app.pipeline import tracking
from app.pipeline.tracking import CHAMPION_ALIAS


def set_champion(model: str, version: str) -> AliasOutcome:
    # Fail fast when the tracking server is down: the default retries for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(tracking.tracking_uri())
        MlflowClient().set_registered_model_alias(model, CHAMPION_ALIAS, version)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        return AliasOutcome(status="failed", reason=f"{type(exc).__name__}: {reason}")
    return AliasOutcome(status="updated", alias=CHAMPION_ALIAS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app.pipeline.alias", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    print(set_champion(args.model, args.version).model_dump_json(), flush=True)


if __name__ == "__main__":
    main()
