"""The benchmark's BentoML peer: the same scikit-learn pipeline, served by BentoML 1.4 with adaptive batching.

    BENCH_MODEL_DIR=.../models bentoml serve bench.bento_service:Predictor --host 127.0.0.1 --port P

It runs in the bench's own virtualenv (artifacts/bench/venv-bentoml, see bench/run.py), never in
the project's: nothing here imports app/. It unpickles models/model.joblib from the scratch
training, reads the column order from model.json beside it, and answers POST /predict with the
body ours takes, `{"instances": [{feature: value, ...}]}` (BentoML names the JSON field after the
parameter), with a label and every class probability per row, as ours does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bentoml
import joblib
import numpy as np

# Rows, not requests: BentoML counts a list input's length as its batch size. 1,000 rows hold 32
# one-row requests or ten 100-row ones. BentoML answers 503 to a request it expects to wait longer
# than max_latency_ms, and a 503 stops the bench: 5 s is well above the p99 this closed-loop load
# gives (under 1 s at c=32 with 100 rows here), so every request is served and counted.
MAX_BATCH_ROWS = 1000
MAX_LATENCY_MS = 5000


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")))
class Predictor:
    def __init__(self) -> None:
        model_dir = Path(os.environ["BENCH_MODEL_DIR"])
        metadata = json.loads((model_dir / "model.json").read_text())
        self.columns = [feature["name"] for feature in metadata["features"]]
        numeric = all(feature["type"] == "numeric" for feature in metadata["features"])
        self.dtype = np.float64 if numeric else object
        self.pipeline = joblib.load(model_dir / "model.joblib")
        self.classes = [str(label) for label in self.pipeline.classes_]

    # A plain def: BentoML runs each batch in its thread pool, off the event loop.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, instances: list[dict[str, float | str]]) -> list[dict[str, Any]]:
        matrix = np.array([[row[c] for c in self.columns] for row in instances], dtype=self.dtype)
        probabilities = self.pipeline.predict_proba(matrix)
        labels = np.asarray(self.classes)[probabilities.argmax(axis=1)].tolist()
        return [
            {"label": label, "probabilities": dict(zip(self.classes, row, strict=True))}
            for label, row in zip(labels, probabilities.tolist(), strict=True)
        ]
