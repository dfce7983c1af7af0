"""The request model, generated from model.json once per loaded model.

Validation is the costly part of a small request, so the row model is compiled by pydantic
once, when the model loads, and each request is validated straight from its JSON bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from app.core.artifacts import MISSING_CATEGORY, Feature, ModelMetadata, matrix_dtype
from app.serving.json_rows import FastRows


class RowError(ValueError):
    """Validation failures, each naming the row (or CSV line) and the field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors

    def at_lines(self, lines: list[int]) -> RowError:
        """The same errors, each also naming its row's line in a CSV file."""
        return RowError([e | {"line": lines[e["row"]]} if "row" in e else e for e in self.errors])


_ROW_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=False)


def _field_type(feature: Feature) -> Any:
    if feature.type == "numeric":
        value_type: Any = float
    else:
        value_type = Literal[tuple(feature.categories or ())] if feature.categories else str
    # Training imputes missing values, so a column that had gaps may be null in a request too.
    return value_type | None if feature.missing_fraction > 0 else value_type


def _describe(feature: Feature) -> str:
    if feature.type == "numeric":
        return f"numeric; training range {feature.min} to {feature.max}"
    return f"one of: {', '.join(feature.categories or [])}"


def _clean_errors(exc: ValidationError, lines: list[int] | None = None) -> list[dict[str, Any]]:
    """pydantic's errors without the input values, plus `row` (or `line`) and `field`."""
    cleaned = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = list(error["loc"])
        item: dict[str, Any] = {"loc": loc, "msg": error["msg"], "type": error["type"]}
        if len(loc) >= 2 and loc[0] == "instances" and isinstance(loc[1], int):
            item["row"] = loc[1]
            if len(loc) >= 3:
                item["field"] = loc[2]
        if lines is not None and "row" in item and item["row"] < len(lines):
            item["line"] = lines[item["row"]]
        cleaned.append(item)
    return cleaned


@dataclass(frozen=True)
class RequestSchema:
    features: list[Feature]
    row_model: type[BaseModel]
    request_model: type[BaseModel]
    dtype: type
    max_rows: int
    fast: FastRows  # the same validation in C, for bodies that pass it

    @classmethod
    def build(cls, metadata: ModelMetadata, max_rows: int) -> RequestSchema:
        # Positional field names with the feature name as alias: a feature may be called
        # anything ("model_config", "petal length (cm)") without clashing with pydantic.
        fields: dict[str, Any] = {
            f"f{i}": (_field_type(f), Field(alias=f.name, description=_describe(f)))
            for i, f in enumerate(metadata.features)
        }
        row_model = create_model("Instance", __config__=_ROW_CONFIG, **fields)
        request_model = create_model(
            "PredictRequest",
            __config__=ConfigDict(extra="forbid"),
            instances=(list[row_model], Field(min_length=1, max_length=max_rows)),
        )
        dtype = matrix_dtype(metadata.features)
        fast = FastRows(metadata.features, max_rows, dtype)
        return cls(metadata.features, row_model, request_model, dtype, max_rows, fast)

    def _to_matrix(self, rows: list[BaseModel]) -> np.ndarray:
        if self.dtype is np.float64:
            # None (an allowed missing value) becomes NaN, which the pipeline's imputer fills.
            return np.array([tuple(row.__dict__.values()) for row in rows], dtype=np.float64)
        gaps = tuple(MISSING_CATEGORY if f.type == "categorical" else np.nan for f in self.features)
        return np.array(
            [
                tuple(g if v is None else v for v, g in zip(row.__dict__.values(), gaps, strict=True))
                for row in rows
            ],
            dtype=object,
        )

    def parse_json(self, body: bytes) -> np.ndarray:
        """The request body as the feature matrix; raises RowError."""
        matrix = self.fast.decode(body)
        if matrix is not None:
            return matrix
        try:
            request = self.request_model.model_validate_json(body)
        except ValidationError as exc:
            raise RowError(_clean_errors(exc)) from None
        # `instances` is a field of the model create_model built at run time: mypy cannot see it.
        return self._to_matrix(request.instances)  # type: ignore[attr-defined]

    def parse_records(self, records: list[dict[str, Any]], lines: list[int]) -> np.ndarray:
        """Rows read from a CSV (string values); errors also name each row's line in the file."""
        try:
            request = self.request_model.model_validate({"instances": records})
        except ValidationError as exc:
            raise RowError(_clean_errors(exc, lines)) from None
        # `instances` is a field of the model create_model built at run time: mypy cannot see it.
        return self._to_matrix(request.instances)  # type: ignore[attr-defined]
