"""A JSON body straight into the feature matrix, decoded and type-checked in C by msgspec.

The fast path for every valid request: no pydantic model per row. msgspec stops at a body's first
problem, while the API's 422 names every bad row and field, so a body msgspec refuses (or that
holds a value msgspec lets through and the API does not, such as an empty batch) is handed back,
and RequestSchema validates it with pydantic for the full answer. The two accept the same bodies:
the types below are the same as the pydantic row model's, and what msgspec cannot express (the
batch size, finite floats) is checked here on the whole matrix at once.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Literal

import msgspec
import numpy as np

from app.core.artifacts import MISSING_CATEGORY, Feature


def _row_type(feature: Feature) -> Any:
    if feature.type == "numeric":
        value: Any = float
    else:
        value = Literal[tuple(feature.categories)] if feature.categories else str
    return value | None if feature.missing_fraction > 0 else value


class FastRows:
    """Decodes `{"instances": [{feature: value, ...}, ...]}` for one model's features."""

    def __init__(self, features: list[Feature], max_rows: int, dtype: type) -> None:
        self.max_rows = max_rows
        self.dtype = dtype
        # Positional names with the feature names as the JSON keys, as in the pydantic model.
        names = {f"f{i}": feature.name for i, feature in enumerate(features)}
        row = msgspec.defstruct(
            "Instance",
            [(f"f{i}", _row_type(feature)) for i, feature in enumerate(features)],
            rename=names,
            forbid_unknown_fields=True,
            # Floats, strings and None cannot make a cycle: the rows need not be tracked by the
            # cycle collector, which makes each cheaper to create and to free.
            gc=False,
        )
        request = msgspec.defstruct(
            "PredictRequest",
            [("instances", list[row])],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
        )
        self._decoder = msgspec.json.Decoder(request)
        self._gaps = tuple(MISSING_CATEGORY if f.type == "categorical" else np.nan for f in features)
        self._numeric = np.array([f.type == "numeric" for f in features])
        # No gap allowed: every cell is a float, read into the matrix by np.fromiter, which is
        # faster than np.array on a list of tuples (and refuses None, which np.array reads as NaN).
        self._width = len(features)
        self._dense = all(f.missing_fraction == 0 for f in features)

    def decode(self, body: bytes) -> np.ndarray | None:
        """The matrix, or None when the body needs the full validation (it is invalid, most likely)."""
        try:
            # A Struct type defstruct built at run time: mypy cannot see its field.
            rows = self._decoder.decode(body).instances  # type: ignore[attr-defined]
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if not 1 <= len(rows) <= self.max_rows:
            return None
        astuple = msgspec.structs.astuple
        if self.dtype is np.float64:
            if self._dense:
                cells = chain.from_iterable(map(astuple, rows))
                matrix = np.fromiter(cells, np.float64, len(rows) * self._width).reshape(len(rows), -1)
            else:
                # None (an allowed gap) becomes NaN, which the imputer fills; JSON has no NaN of its own.
                matrix = np.array([astuple(row) for row in rows], dtype=np.float64)
            return None if np.isinf(matrix).any() else matrix
        gaps = self._gaps
        matrix = np.array(
            [tuple(g if v is None else v for v, g in zip(astuple(row), gaps, strict=True)) for row in rows],
            dtype=object,
        )
        numeric = matrix[:, self._numeric].astype(np.float64)
        return None if np.isinf(numeric).any() else matrix
