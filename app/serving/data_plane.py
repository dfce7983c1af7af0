"""One inference path for every protocol: a codec decodes the request, `DataPlane` does the rest.

A protocol is a codec (`Codec`): it decodes a request into the model's input (`ModelInput`: the
feature matrix, its gaps, where its rows start) and encodes the answers in the protocol's envelope.
What happens between is the same for all of them, here: validate (one validator, one vocabulary of
errors: app.serving.validation), score (one model call, counted in the metrics:
app.serving.inference.score), trace (ids, the prediction log, the shadow: app.serving.tracing).

Where: a small body of a fast model is decoded, scored and encoded on the event loop, as that takes
tens of microseconds, less than the thread-pool hand-off; a large body, or a model measured to be
slow, goes to the thread pool (app.serving.inference: INLINE_BODY_BYTES, predictor_is_slow), so no
request holds the event loop for long. A CSV chunk is always scored in the pool: its caller
(app.api.csv_stream) places it there and calls `infer` for each chunk, its rows numbered on from
the chunk before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import anyio

from app.observability.role_outcomes import RoleOutcomes
from app.serving.inference import INLINE_BODY_BYTES, off_loop, predictor_is_slow, score
from app.serving.predictor import Answers, Predictor
from app.serving.tracing import Tracing
from app.serving.validation import ModelInput, RowError

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Inferred:
    answers: Answers
    ids: list[str]  # each row's prediction id


class Codec(Protocol[T_co]):
    """A protocol's request and answer; made per request, holding what it decodes."""

    def decode(self, predictor: Predictor) -> ModelInput:
        """The request as the model's input; raises the protocol's error for a malformed one."""
        ...

    def encode(self, predictor: Predictor, model_input: ModelInput, inferred: Inferred) -> T_co:
        """The answers in the protocol's envelope."""
        ...


@dataclass(frozen=True, slots=True)
class DataPlane:
    """One request's inference: who asked (the token's subject: a username, never the token), the
    app's tracing and scoring threads, and, while a canary runs, the window of the version and role
    answering (its failed model calls count against it)."""

    user: str
    tracing: Tracing
    scoring: anyio.CapacityLimiter
    metrics_enabled: bool
    outcomes: RoleOutcomes | None = None

    def infer(self, predictor: Predictor, model_input: ModelInput) -> Inferred:
        """Validate, score, trace: the answers and ids of valid rows, or RowError naming every bad
        cell (or, from the model, every row it has no finite answer for)."""
        predictor.schema.validator.check(model_input)
        matrix, first, key = model_input.matrix, model_input.first_row, model_input.key
        try:
            answers = score(predictor, matrix, self.metrics_enabled)
        except RowError as exc:  # the model's rows are the matrix's: number them as the validator does
            if self.outcomes is not None:
                self.outcomes.model_failed()
            raise exc.shifted(first) from None
        # A shadow compares itself with the champion: a canary's answers are not offered to it.
        shadowed = self.outcomes is None or self.outcomes.role == "champion"
        ids = self.tracing.trace(predictor, self.user, matrix, answers, first, key, shadowed)
        return Inferred(answers, ids)

    def answer(self, codec: Codec[T], predictor: Predictor) -> T:
        """Decode, infer, encode, here and now (in whatever thread calls it)."""
        model_input = codec.decode(predictor)
        return codec.encode(predictor, model_input, self.infer(predictor, model_input))

    async def serve(self, codec: Codec[T], predictor: Predictor, body_bytes: int) -> T:
        """`answer` on the event loop for a small body and a fast model, else in the thread pool."""
        if body_bytes > INLINE_BODY_BYTES or predictor_is_slow(predictor):
            return await off_loop(self.scoring, self.answer, codec, predictor)
        return self.answer(codec, predictor)
