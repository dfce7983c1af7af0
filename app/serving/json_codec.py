"""/predict's codec: `{"instances": [{feature: value, ...}]}` in (app.serving.schema: msgspec, then
pydantic for a malformed body), `{"model_version": ..., "predictions": [...]}` out
(app.serving.json_answer). With ?compare=true the answer also holds every candidate's predictions."""

from __future__ import annotations

from typing import Any

from app.serving import json_answer
from app.serving.comparison import Candidate
from app.serving.data_plane import Inferred
from app.serving.predictor import Predictor
from app.serving.validation import ModelInput


class JsonCodec:
    __slots__ = ("body", "candidates")

    def __init__(self, body: bytes, candidates: tuple[Candidate, ...] | None = None) -> None:
        self.body = body
        self.candidates = candidates  # ?compare=true: the champion's training run's candidates

    def decode(self, predictor: Predictor) -> ModelInput:
        return predictor.schema.parse_json(self.body)

    def encode(self, predictor: Predictor, model_input: ModelInput, inferred: Inferred) -> bytes:
        predictions = json_answer.predictions(inferred.answers, inferred.ids)
        document: dict[str, Any] = {"model_version": predictor.version, "predictions": predictions}
        if self.candidates is not None:
            matrix = model_input.matrix
            document["candidates"] = [
                {
                    "name": c.name,
                    "metric": c.metric,
                    "score": c.score,
                    "champion": c.champion,
                    "predictions": predictions if c.champion else c.predict(matrix, predictor.metadata),
                }
                for c in self.candidates
            ]
        return json_answer.encode(document)
