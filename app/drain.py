"""python -m app.drain: take this replica out of rotation before it is stopped (a preStop hook).

Creates DRAIN_FILE, so that /ready and /v2/health/ready answer 503 `draining` from every process of
the replica while it goes on serving, then waits SHUTDOWN_DRAIN_SECONDS for the load balancer (the
Service's endpoints, the ingress) to notice, and exits. Kubernetes sends SIGTERM once it has: uvicorn
then stops accepting and lets the requests in flight finish (SHUTDOWN_TIMEOUT_SECONDS).
`python -m app.serve` removes a DRAIN_FILE left from before when it starts.
"""

from __future__ import annotations

import logging
import time

from app.core.config import load_settings
from app.observability.logging import configure_logging

log = logging.getLogger("predictor")


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    settings.drain_file.parent.mkdir(parents=True, exist_ok=True)
    settings.drain_file.touch()
    log.info(
        "draining: /ready answers 503 for %g s, then the requests in flight finish",
        settings.shutdown_drain_seconds,
    )
    time.sleep(settings.shutdown_drain_seconds)


if __name__ == "__main__":
    main()
