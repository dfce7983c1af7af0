"""Security events: quiet to the caller, loud in metrics and logs.

The caller only ever sees a generic 401/403/429; operators see the reason, the user and the
client address here, and `predictor_auth_failures_total{reason}` in Prometheus.
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from app.observability.metrics import AUTH, AUTH_FAILURES

security_log = logging.getLogger("predictor.security")


def auth_failed(reason: str, request: Request, why: str, method: str | None = None) -> None:
    """Counted by reason, and with `method` (password, client_credentials, ...) as that method's
    refusal in predictor_auth_total."""
    AUTH_FAILURES.labels(reason=reason).inc()
    if method is not None:
        AUTH.labels(method=method, result="refused").inc()
    state = request.scope.get("state", {})
    client = request.client.host if request.client else None
    security_log.warning(
        "authentication failed",
        extra={
            "fields": {
                "reason": reason,
                "why": why,
                "user": state.get("user"),
                "key_owner": state.get("key_owner"),  # an API key's user or client (user is key:<id>)
                "client": client,
                "route": request.url.path[:200],
                "request_id": state.get("request_id"),
            }
        },
    )
