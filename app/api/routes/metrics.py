"""GET /metrics for Prometheus, behind a bearer token when METRICS_TOKEN is set."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response

from app.api.deps import ServingDep, SettingsDep
from app.observability import metrics
from app.observability.metrics import exposition

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request, settings: SettingsDep, serving: ServingDep) -> Response:
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "metrics need the METRICS_TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
    predictor = serving.current
    if predictor is not None and predictor.drift is not None:
        metrics.publish_drift(predictor.drift)  # as of now, whatever the refresh period
    if predictor is not None:
        metrics.publish_expected_accuracy(predictor.version, predictor.confidence)
    body, content_type = exposition()
    return Response(body, media_type=content_type)
