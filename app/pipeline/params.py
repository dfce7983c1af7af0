"""params.yaml, typed: a misspelled key or an unknown candidate fails before any work starts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from app.core.artifacts import Task
from app.pipeline.candidates import ALL_CANDIDATES, DEFAULT_CANDIDATES, candidate_problem
from app.pipeline.errors import PipelineError
from app.pipeline.scoring import ALL_METRICS

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str = "sklearn:iris"
    target: str | None = None
    task: Literal["auto", "classification", "regression"] = "auto"
    test_size: float = Field(0.2, gt=0, lt=1)
    categorical: list[str] = []
    numeric: list[str] = []
    drop: list[str] = []


class PrepareParams(_Section):
    profile_bins: int = Field(10, ge=2, le=100)


# Candidate name -> its hyperparameters (scikit-learn's own names).
CandidateSet = dict[str, dict[str, Any]]
_CANDIDATE_SET = TypeAdapter(CandidateSet)
TASKS: tuple[Task, ...] = ("classification", "regression")


def _as_candidate_set(value: Any) -> Any:
    """A plain list of names, or name -> hyperparameters (none given: the estimator's defaults)."""
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        return value  # pydantic says what it should be
    if not value:
        raise ValueError("list at least one candidate")
    return {name: (hp or {}) for name, hp in value.items()}


class TaskCandidates(_Section):
    """train.candidates per task: train fits the list of the task prepare found in the data.
    A task left out gets the built-in list (app/pipeline/candidates.py's DEFAULT_CANDIDATES)."""

    classification: CandidateSet = Field(
        default_factory=lambda: copy.deepcopy(DEFAULT_CANDIDATES["classification"])
    )
    regression: CandidateSet = Field(default_factory=lambda: copy.deepcopy(DEFAULT_CANDIDATES["regression"]))

    @field_validator("classification", "regression", mode="before")
    @classmethod
    def _names_only_is_fine(cls, value: Any) -> Any:
        return _as_candidate_set(value)

    @field_validator("classification", "regression")
    @classmethod
    def _known_for_the_task(cls, value: CandidateSet, info: ValidationInfo) -> CandidateSet:
        for name in value:
            problem = candidate_problem(name, str(info.field_name))
            if problem is not None:
                raise ValueError(problem)
        return value


class TrainParams(_Section):
    experiment: str = "predictor"
    registered_model: str = "predictor"
    metric: str = "auto"
    cv_folds: int = Field(5, ge=2, le=20)
    # Three forms: per task ({classification: {...}, regression: {...}}), `auto` (or left out: the
    # built-in per-task lists), or one flat mapping / list of names for whatever the task is (train
    # then refuses a name that does not do the data's task). Read them through candidates_for().
    candidates: CandidateSet | TaskCandidates = Field(
        default_factory=TaskCandidates, union_mode="left_to_right"
    )
    # After candidates, so that its check sees them.
    champion: str | None = None

    @field_validator("candidates", mode="before")
    @classmethod
    def _one_of_the_forms(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return TaskCandidates()
        if isinstance(value, TaskCandidates):
            return value
        if isinstance(value, dict) and value.keys() & set(TASKS):
            if not value.keys() <= set(TASKS):
                raise ValueError(
                    "give either per-task lists (classification, regression) or candidate names, not both"
                )
            return TaskCandidates.model_validate(value)
        if not isinstance(value, dict | list):
            raise ValueError(
                "expected auto, name -> hyperparameters, a list of names, or per-task lists "
                "(classification: ..., regression: ...)"
            )
        # Validated here, so that an error names the key without the union's member in between.
        return _CANDIDATE_SET.validate_python(_as_candidate_set(value))

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: CandidateSet | TaskCandidates) -> CandidateSet | TaskCandidates:
        # A flat list may name any task's candidates: train checks them against the data's task.
        if isinstance(value, dict):
            for name in value:
                if name not in ALL_CANDIDATES:
                    raise ValueError(
                        f"unknown candidate '{name}' (known: {', '.join(sorted(ALL_CANDIDATES))})"
                    )
        return value

    @field_validator("champion")
    @classmethod
    def _champion_is_a_candidate(cls, value: str | None, info: ValidationInfo) -> str | None:
        candidates = info.data.get("candidates")  # absent when they failed their own checks
        if value is None or candidates is None:
            return value
        listed = (
            [candidates]
            if isinstance(candidates, dict)
            else [candidates.classification, candidates.regression]
        )
        if not any(value in names for names in listed):
            raise ValueError(f"'{value}' is not one of train.candidates")
        return value

    def candidates_for(self, task: Task) -> CandidateSet:
        """The candidates train fits on data of this task: name -> hyperparameters, in params order."""
        if isinstance(self.candidates, TaskCandidates):
            return getattr(self.candidates, task)
        return self.candidates

    def candidates_key(self, task: Task) -> str:
        """Where candidates_for(task) comes from in params.yaml, for error messages."""
        return (
            f"train.candidates.{task}" if isinstance(self.candidates, TaskCandidates) else "train.candidates"
        )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value != "auto" and value not in ALL_METRICS:
            raise ValueError(f"unknown metric '{value}' (known: auto, {', '.join(sorted(ALL_METRICS))})")
        return value


class Params(_Section):
    seed: int = 42
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    train: TrainParams

    @classmethod
    def load(cls, path: Path = DEFAULT_PARAMS) -> Params:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise PipelineError(f"{path}: file not found") from None
        except yaml.YAMLError as exc:
            raise PipelineError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise PipelineError(f"{path}: {key}: {first['msg']}") from None
