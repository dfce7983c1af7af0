"""What becomes of a request's answers besides being sent: an id per row, the sampled prediction
log, and a shadow challenger's copy of the traffic. Called once per model call, on every path
(JSON, CSV chunk, V2), right after the champion answered; none of it waits for anything slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.serving.prediction_log import PredictionLog, prediction_ids
from app.serving.predictor import Answers, Predictor


class Shadow(Protocol):
    """A challenger scoring the same rows off the request path (app/serving/shadow.py)."""

    def offer(
        self,
        champion: Predictor,
        matrix: np.ndarray,
        answers: Answers,
        ids: list[str],
        logged: np.ndarray | None,
    ) -> None:
        """Take the batch if there is room, else drop it; never block. `logged` says which rows the
        prediction log kept (None: all): only those can be judged against feedback."""
        ...


class Tracing:
    def __init__(self, log: PredictionLog | None) -> None:
        self.log = log  # None: PREDICTION_LOG_SAMPLE is 0
        self.shadow: Shadow | None = None  # set and cleared by the shadow's owner (ServingState)

    def trace(
        self,
        predictor: Predictor,
        user: str,
        matrix: np.ndarray,
        answers: Answers,
        first: int = 0,
        key: str | None = None,
        shadowed: bool = True,
    ) -> list[str]:
        """The rows' prediction ids (`first`, `key`: a CSV chunk continues its request's numbering);
        `shadowed`: offered to the shadow, if one runs (not a canary's answers)."""
        ids = prediction_ids(len(answers), first, key)
        if self.log is not None:
            logged = self.log.record(predictor, user, matrix, answers, ids)
        else:
            logged = np.zeros(len(ids), dtype=bool)
        shadow = self.shadow
        if shadow is not None and shadowed:
            shadow.offer(predictor, matrix, answers, ids, logged)
        return ids


@dataclass(frozen=True)
class Traced:
    """One request's tracing, and who asked (the token's subject: a username, never the token)."""

    tracing: Tracing
    user: str
