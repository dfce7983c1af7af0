"""The last training run's candidates, served beside the champion for `POST /predict?compare=true`.

Loaded with the champion (same folder, each file's checksum verified first, ONNX preferred as
for the champion) and swapped with it as one object, so a comparison never mixes
two versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.artifacts import ModelMetadata
from app.core.loading import ModelLoadError
from app.serving.predictor import Model, Predictor, answers, load_model


@dataclass(frozen=True)
class Candidate:
    name: str
    metric: str
    score: float | None  # the candidate's test metric, as train reported it
    metrics: dict[str, float]
    champion: bool
    model: Model

    def predict(self, matrix: np.ndarray, metadata: ModelMetadata) -> list[dict[str, Any]]:
        """Answers shaped like the champion's: label and probabilities, or value."""
        return answers(self.model, matrix, metadata)


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


def load_candidates(model_dir: Path, predictor: Predictor, threads: int = 1) -> tuple[Candidate, ...]:
    metadata = predictor.metadata
    loaded = []
    for info in metadata.candidates:
        if info.sha256 == metadata.sha256:
            model = predictor.model  # the champion itself: already verified and loaded
        else:
            owner = f"candidate {info.name}: "
            model = load_model(model_dir, metadata, info.path, info.sha256, info.onnx, owner, threads)
            if metadata.task == "classification" and list(model.classes) != metadata.classes:
                raise ModelLoadError(f"{owner}its classes {list(model.classes)} differ from model.json's")
        loaded.append(
            Candidate(
                name=info.name,
                metric=metadata.metric,
                score=info.metrics.get(metadata.metric),
                metrics=info.metrics,
                champion=info.name == metadata.name,
                model=model,
            )
        )
    return tuple(loaded)
