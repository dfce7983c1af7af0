"""The benchmark's ceiling: a bare FastAPI app with the shape of our two hot routes and nothing else.

    BENCH_CEILING_FEATURES=sepal_length,sepal_width,petal_length,petal_width \
        python -m uvicorn bench.ceiling:create_app --factory --host 127.0.0.1 --port P --no-access-log

POST /predict validates the body ours takes, `{"instances": [{feature: float, ...}]}`, with pydantic
and answers a constant; GET /health answers a constant. Both are `async def`: no thread-pool hand-off,
no auth, no metrics, no model. Served by the same uvicorn as ours, in the project's virtualenv, it is
what this machine gives for these routes before any of our work: bench/run.py reports ours as a
fraction of it.
"""

# No `from __future__ import annotations`: the route's body type is built at run time, and FastAPI
# must see the class itself, not a name it cannot resolve in this module.
import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import create_model

# The project's default data set (Iris); the bench passes the trained model's own columns.
DEFAULT_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# Our answer's shape for one row, so both send about the same bytes.
PREDICTION = {
    "model_version": "ceiling",
    "predictions": [
        {"label": "setosa", "probabilities": {"setosa": 0.98, "versicolor": 0.02, "virginica": 0.0}}
    ],
}
HEALTH = {"status": "ok", "model_version": "ceiling"}


def create_app(features: list[str] | None = None) -> FastAPI:
    """The app for these float features (default: BENCH_CEILING_FEATURES, comma-separated, or Iris')."""
    if features is None:
        listed = os.environ.get("BENCH_CEILING_FEATURES", "")
        features = [name for name in listed.split(",") if name] or list(DEFAULT_FEATURES)
    row = create_model("Row", **{name: (float, ...) for name in features})  # type: ignore[call-overload]
    request = create_model("PredictRequest", instances=(list[row], ...))  # type: ignore[valid-type]

    app = FastAPI(title="bench ceiling", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/predict")
    async def predict(body: request) -> JSONResponse:  # type: ignore[valid-type]
        return JSONResponse(PREDICTION)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(HEALTH)

    return app
