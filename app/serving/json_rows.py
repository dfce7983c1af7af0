"""A JSON body straight into the model's input, decoded and type-checked in C by msgspec.

The fast path for every well-formed body: no pydantic model per row, no Python loop per row. It
checks the JSON types only (a number or null for a numeric feature, a string or null for a
categorical one, no field left out or added); the values (finite numbers, known categories, gaps
where training had some) are the validator's (app.serving.validation), as for every protocol. A
body msgspec refuses is handed back (None), and RequestSchema reads it with pydantic for the full
422 of a malformed body. The two accept the same bodies: the types below are the pydantic parsing
model's.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import msgspec
import numpy as np

from app.core.artifacts import MISSING_CATEGORY, Feature
from app.serving.validation import ModelInput


def cell_type(feature: Feature) -> Any:
    """What a JSON cell may hold: null anywhere (the validator says where a gap is allowed)."""
    return (float if feature.type == "numeric" else str) | None


class FastRows:
    """Decodes `{"instances": [{feature: value, ...}, ...]}` for one model's features."""

    def __init__(self, features: list[Feature], dtype: type) -> None:
        self.dtype = dtype
        # Positional names with the feature names as the JSON keys, as in the pydantic model.
        names = {f"f{i}": feature.name for i, feature in enumerate(features)}
        row = msgspec.defstruct(
            "Instance",
            [(f"f{i}", cell_type(feature)) for i, feature in enumerate(features)],
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
        self._width = len(features)
        self._gaps = np.array(
            [MISSING_CATEGORY if f.type == "categorical" else np.nan for f in features], dtype=object
        )

    def decode(self, body: bytes) -> ModelInput | None:
        """The model input, or None when the body needs pydantic's full answer (it is malformed, most
        likely: msgspec also refuses numbers past float64's range, which pydantic reads as infinity)."""
        try:
            # A Struct type defstruct built at run time: mypy cannot see its field.
            rows = self._decoder.decode(body).instances  # type: ignore[attr-defined]
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if self.dtype is np.float64:
            cells = chain.from_iterable(map(msgspec.structs.astuple, rows))
            # np.fromiter is faster than np.array on a list of tuples; it reads None as NaN, and
            # msgspec makes no NaN of its own (JSON has none): every NaN is a gap.
            flat = np.fromiter(cells, np.float64, len(rows) * self._width)
            return ModelInput(flat.reshape(len(rows), self._width), nan_is_gap=True)
        return self.assemble(list(map(msgspec.structs.astuple, rows)))

    def assemble(self, cells: list[tuple[Any, ...]]) -> ModelInput:
        """Rows of cells (None for a gap) as the model input: a gap is NaN, or "" in a categorical
        column (MISSING_CATEGORY), and marked in `missing`."""
        table = np.array(cells, dtype=object).reshape(len(cells), self._width)
        gaps: np.ndarray = table == None  # noqa: E711 (numpy compares each element)
        if gaps.any():
            table = np.where(gaps, self._gaps, table)
        matrix = table.astype(np.float64) if self.dtype is np.float64 else table
        return ModelInput(matrix, gaps if gaps.any() else None)
