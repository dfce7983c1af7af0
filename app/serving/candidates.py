"""The last training run's candidates, served beside the champion for `POST /predict?compare=true`.

Loaded with the champion (same folder, each checksum verified before unpickling) and swapped with
it as one object, so a comparison never mixes two versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.artifacts import ModelMetadata
from app.serving.predictor import ModelLoadError, Predictor, answers, load_verified


@dataclass(frozen=True)
class Candidate:
    name: str
    metric: str
    score: float | None  # the candidate's test metric, as train reported it
    metrics: dict[str, float]
    champion: bool
    pipeline: Any

    def predict(self, matrix: np.ndarray, task: str) -> list[dict[str, Any]]:
        """Answers shaped like the champion's: label and probabilities, or value."""
        return answers(self.pipeline, matrix, task)


@dataclass(frozen=True)
class Served:
    """What one swap replaces: the champion and its candidates, from the same folder."""

    predictor: Predictor
    folder: Path
    # None until loaded: at start-up the champion serves first and its candidates follow in the
    # background, so they add nothing to the cold start.
    candidates: tuple[Candidate, ...] | None = None
    # Why the candidates cannot be served (then `candidates` is empty).
    candidates_error: str | None = None


def load_candidates(model_dir: Path, predictor: Predictor) -> tuple[Candidate, ...]:
    metadata: ModelMetadata = predictor.metadata
    loaded = []
    for info in metadata.candidates:
        path = (model_dir / info.path).resolve()
        if not path.is_relative_to(model_dir.resolve()):
            raise ModelLoadError(f"candidate {info.name}: path {info.path} leaves the model folder")
        if info.sha256 == metadata.sha256:
            pipeline = predictor.pipeline  # the champion itself: already verified and loaded
        else:
            pipeline = load_verified(path, info.sha256, f"candidate {info.name}: {path.name}")
        loaded.append(
            Candidate(
                name=info.name,
                metric=metadata.metric,
                score=info.metrics.get(metadata.metric),
                metrics=info.metrics,
                champion=info.name == metadata.name,
                pipeline=pipeline,
            )
        )
    return tuple(loaded)
