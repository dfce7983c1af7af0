"""params.yaml, typed: a misspelled key or an unknown candidate fails before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.pipeline.candidates import ALL_CANDIDATES
from app.pipeline.errors import PipelineError
from app.pipeline.metrics import ALL_METRICS

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


class TrainParams(_Section):
    experiment: str = "predictor"
    registered_model: str = "predictor"
    metric: str = "auto"
    cv_folds: int = Field(5, ge=2, le=20)
    champion: str | None = None
    candidates: dict[str, dict[str, Any]]

    @field_validator("candidates", mode="before")
    @classmethod
    def _names_only_is_fine(cls, value: Any) -> Any:
        # Accept a plain list of names as well as name -> hyperparameters.
        if isinstance(value, list):
            return {name: {} for name in value}
        return {name: (hp or {}) for name, hp in value.items()} if isinstance(value, dict) else value

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("list at least one candidate")
        for name in value:
            if name not in ALL_CANDIDATES:
                raise ValueError(f"unknown candidate '{name}' (known: {', '.join(sorted(ALL_CANDIDATES))})")
        return value

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
