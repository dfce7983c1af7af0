"""Step 4 of an import: the compiled graph against the original library, on real rows.

The rows are the --sample's, else MLflow's input example (topped up with drawn rows to 500), else
drawn from the schema (each numeric column uniform over its range, widened; each categorical column
over its categories; a few gaps where gaps are served). Labels must be identical and every
probability or value within the tolerance (absolute, 1e-5 by default): ONNX conversion is where
answers silently change (float32 rounding moving a row down another branch, an encoder converted
wrong), so a miss refuses the import with the number of rows that differ, the largest difference and
a row that shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd

from app.core.artifacts import Parity
from app.importing.errors import Refused
from app.importing.schema import ModelSchema

DEFAULT_TOLERANCE = 1e-5
DRAWN_ROWS = 500
SAMPLE_ROWS_MAX = 10_000  # parity on more costs time and proves little more

RowsFrom = Literal["sample", "input_example", "schema"]


def parity_rows(
    schema: ModelSchema, sample: pd.DataFrame | None, example: object, seed: int = 0
) -> tuple[np.ndarray, RowsFrom]:
    """The rows to compare on, as serving's feature matrix, and where they came from."""
    if sample is not None:
        return matrix_of(sample.head(SAMPLE_ROWS_MAX), schema), "sample"
    if isinstance(example, pd.DataFrame) and all(name in example.columns for name in schema.names):
        # An input example is often a handful of rows: drawn rows widen what parity covers.
        rows = matrix_of(example, schema)
        if len(rows) < DRAWN_ROWS:
            rows = np.concatenate([rows, drawn_rows(schema, seed, DRAWN_ROWS - len(rows))])
        return rows, "input_example"
    return drawn_rows(schema, seed), "schema"


def matrix_of(rows: pd.DataFrame, schema: ModelSchema) -> np.ndarray:
    """A frame's columns, in the model's order, as serving builds its matrix: float64 when every
    column is a number, else objects (floats, category strings, None for a gap)."""
    numeric = all(f.type == "numeric" for f in schema.features)
    matrix = np.empty((len(rows), len(schema.features)), dtype=np.float64 if numeric else object)
    for j, feature in enumerate(schema.features):
        column = rows[feature.name]
        if feature.type == "numeric":
            matrix[:, j] = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        else:
            matrix[:, j] = [None if pd.isna(v) else str(v) for v in column]
    return matrix


def drawn_rows(schema: ModelSchema, seed: int = 0, rows: int = DRAWN_ROWS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    numeric = all(f.type == "numeric" for f in schema.features)
    matrix = np.empty((rows, len(schema.features)), dtype=np.float64 if numeric else object)
    for j, feature in enumerate(schema.features):
        gaps = rng.random(rows) < (0.05 if feature.missing_fraction > 0 else 0.0)
        if feature.type == "numeric":
            low = feature.min if feature.min is not None else -3.0
            high = feature.max if feature.max is not None else 3.0
            span = (high - low) or 1.0
            column = rng.uniform(low - 0.1 * span, high + 0.1 * span, rows)
            column[gaps] = np.nan
            matrix[:, j] = column
        else:
            values = rng.choice(feature.categories or [""], rows).astype(object)
            values[gaps] = None
            matrix[:, j] = values
    return matrix


def check_parity(
    ours: Callable[[np.ndarray], np.ndarray],
    theirs: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    rows_from: RowsFrom,
    schema: ModelSchema,
    tolerance: float,
) -> Parity:
    """Parity when the graph answers as the library does; Refused('parity', ...) when not."""
    try:
        expected = np.asarray(theirs(rows), dtype=np.float64)
    except Exception as exc:
        raise Refused(
            "parity", f"the original model cannot answer the {rows_from} rows: {type(exc).__name__}: {exc}"
        ) from None
    try:
        with np.errstate(all="ignore"):
            found = np.asarray(ours(rows), dtype=np.float64)
    except Exception as exc:
        raise Refused(
            "parity", f"onnxruntime cannot run the compiled graph: {type(exc).__name__}: {exc}"
        ) from None
    if found.shape != expected.shape:
        raise Refused("parity", f"the compiled graph answers shape {found.shape}, the model {expected.shape}")
    difference = np.abs(found - expected)
    difference = np.where(np.isnan(found) & np.isnan(expected), 0.0, difference)
    difference = np.where(np.isnan(difference), np.inf, difference)
    per_row = difference.max(axis=1) if difference.ndim == 2 else difference
    labels_differing = np.zeros(len(rows), dtype=bool)
    if schema.task == "classification":
        labels_differing = found.argmax(axis=1) != expected.argmax(axis=1)
    bad = labels_differing | (per_row > tolerance)
    worst = float(per_row.max()) if len(per_row) else 0.0
    if bad.any():
        row = int(np.argmax(np.where(bad, per_row, -1.0)))
        shown = ", ".join(f"{name}={_cell(v)}" for name, v in zip(schema.names, rows[row], strict=True))
        labels = f", {int(labels_differing.sum())} with another label" if labels_differing.any() else ""
        raise Refused(
            "parity",
            f"{int(bad.sum())} of {len(rows)} {rows_from} rows differ{labels}: the largest difference is "
            f"{worst:.3g} (tolerance {tolerance:g}), on row {row + 1} ({shown}); a wider tolerance "
            "accepts it knowingly",
        )
    return Parity(
        rows=len(rows),
        rows_from=rows_from,
        labels_differing=0,
        max_difference=worst,
        tolerance=tolerance,
    )


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    return f"{value:.6g}" if isinstance(value, float) else repr(value)
