"""The request models, generated from model.json once per loaded model.

Two pydantic models, each with one job. The documenting one (`Instance` in `PredictRequest`)
describes the body in OpenAPI: each feature's type, categories, whether it may be null, the batch
bounds. The parsing one reads a body msgspec (app.serving.json_rows) refused, for the full 422 of
a malformed body (wrong JSON types, fields left out or added); it takes any number or null, any
string or null, so the values themselves are judged by the validator (app.serving.validation) as
for every protocol, in the same words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from app.core.artifacts import Feature, ModelMetadata, matrix_dtype
from app.serving.json_rows import FastRows, cell_type
from app.serving.validation import ModelInput, RowError, Validator

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


def _clean_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors without the input values, plus `row` and `field`."""
    cleaned = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = list(error["loc"])
        item: dict[str, Any] = {"loc": loc, "msg": error["msg"], "type": error["type"]}
        if len(loc) >= 2 and loc[0] == "instances" and isinstance(loc[1], int):
            item["row"] = loc[1]
            if len(loc) >= 3:
                item["field"] = loc[2]
        cleaned.append(item)
    return cleaned


# The parsing model reads NaN and Infinity (and 1e999) as floats: the validator refuses them, in its words.
_PARSE_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=True, frozen=True, populate_by_name=False)


@dataclass(frozen=True)
class RequestSchema:
    features: list[Feature]
    row_model: type[BaseModel]  # documents a row in OpenAPI
    request_model: type[BaseModel]  # documents the body in OpenAPI
    parse_model: type[BaseModel]  # reads a body msgspec refused, for pydantic's full 422
    dtype: type
    max_rows: int
    fast: FastRows  # the same reading in C, for bodies that pass it
    validator: Validator

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
        cells: dict[str, Any] = {
            f"f{i}": (cell_type(f), Field(alias=f.name)) for i, f in enumerate(metadata.features)
        }
        parse_row = create_model("ParsedInstance", __config__=_PARSE_CONFIG, **cells)
        parse_model = create_model(
            "ParsedRequest", __config__=ConfigDict(extra="forbid"), instances=(list[parse_row], ...)
        )
        dtype = matrix_dtype(metadata.features)
        return cls(
            metadata.features,
            row_model,
            request_model,
            parse_model,
            dtype,
            max_rows,
            FastRows(metadata.features, dtype),
            Validator(metadata.features, max_rows),
        )

    def parse_json(self, body: bytes) -> ModelInput:
        """The request body as the model's input, not yet validated; raises RowError for a
        malformed body (pydantic's errors, naming each row and field)."""
        model_input = self.fast.decode(body)
        if model_input is not None:
            return model_input
        try:
            request = self.parse_model.model_validate_json(body)
        except ValidationError as exc:
            errors = _clean_errors(exc)
            raise RowError(self._in_order(errors + self._value_errors(body, errors))) from None
        # `instances` is a field of the model create_model built at run time: mypy cannot see it.
        rows = request.instances  # type: ignore[attr-defined]
        return self.fast.assemble([tuple(row.__dict__.values()) for row in rows])

    def _value_errors(self, body: bytes, type_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the validator says of the cells pydantic took, so that one answer names every bad
        cell of a body whose only faults are cells (a wrong type, a field left out or added): a null
        where training had no gaps, say, beside a string in a numeric column."""
        if any("field" not in e for e in type_errors):
            return []  # the body itself is malformed (not JSON, no instances, a row not an object)
        try:
            # The standard library's reader takes 1e999 as infinity, as pydantic does; msgspec refuses it.
            rows = json.loads(body)["instances"]
            bad = {(e["row"], e["field"]) for e in type_errors}
            names = [f.name for f in self.features]
            # A cell pydantic refused holds a stand-in the validator takes; its error is pydantic's.
            stand_ins = [0.0 if f.type == "numeric" else (f.categories or [""])[0] for f in self.features]
            cells = [
                tuple(
                    stand_in if (i, name) in bad else row.get(name, stand_in)
                    for name, stand_in in zip(names, stand_ins, strict=True)
                )
                for i, row in enumerate(rows)
            ]
            self.validator.check(self.fast.assemble(cells))
        except RowError as exc:
            return [e for e in exc.errors if (e.get("row"), e.get("field")) not in bad]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # not rows of cells after all: pydantic's errors say what is wrong
        return []

    def _in_order(self, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The body's own errors first, then by row, then by feature in model.json's order."""
        position = {f.name: j for j, f in enumerate(self.features)}
        return sorted(
            errors, key=lambda e: (e.get("row", -1), position.get(e.get("field", ""), len(position)))
        )
