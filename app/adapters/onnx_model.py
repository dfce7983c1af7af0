"""An ONNX model file as train writes it and serving runs it (onnxruntime, no scikit-learn, no pickle).

The file is a standard ONNX graph (app/pipeline/onnx_export.py writes it) with two metadata entries:
`predictor.spec` (task, class order, how columns map to graph inputs) and `predictor.probe` (probe
rows and the scikit-learn pipeline's answers on them). `OnnxModel.from_bytes` creates the
onnxruntime session once and checks those answers before the model may serve.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from app.core.artifacts import MISSING_CATEGORY, Task

SPEC_KEY = "predictor.spec"
PROBE_KEY = "predictor.probe"
# All-numeric data: one float64 matrix. Otherwise one (rows, 1) input per column, in feature order.
NUMERIC_INPUT = "X"
# Probabilities: absolute; regression values: relative (absolute below 1).
TOLERANCE = 1e-6
FORMAT = 1
# Nearest neighbours of a row this many standard deviations out are decided by rounding: its squared
# distances (~z^2) carry an error of ~2e-16 z^2, larger than the gaps between training rows (~z).
# scikit-learn and onnxruntime then pick different neighbours, both arbitrary: such rows are refused.
NEIGHBOURS_MAX_Z = 1e6


def column_input(position: int) -> str:
    return f"c{position}"


class OnnxError(ValueError):
    """Not a model this service can run, or its answers differ from the ones it carries."""


class Standardization(BaseModel):
    """The pipeline's StandardScaler, for the rows scikit-learn refuses: those whose standardised
    value overflows float64 (or float32, which trees compute in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[int]  # positions in the raw feature row
    mean: list[float]
    scale: list[float]
    # float64: scikit-learn refuses a standardised value that overflows; float32: trees cast to
    # float32 first; distances: see NEIGHBOURS_MAX_Z.
    limit: Literal["float64", "float32", "distances"] = "float64"

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # Once per loaded model, not per request.
        return np.asarray(self.mean, dtype=np.float64), np.asarray(self.scale, dtype=np.float64)

    @cached_property
    def _safe(self) -> float:
        """Raw values within +-this cannot reach the limit once standardised: half of it, times the
        smallest scale, less the largest mean. Finite, so an infinite value is never within it."""
        mean, scale = self._arrays
        limits = {"float64": float(np.finfo(np.float64).max), "float32": float(np.finfo(np.float32).max)}
        limit = limits.get(self.limit, NEIGHBOURS_MAX_Z)
        return min(limit / 2 * float(scale.min()) - float(np.abs(mean).max()), 1e300)

    @cached_property
    def _leading(self) -> bool:
        """Whether the columns are the first ones, in order (all-numeric data: the whole row)."""
        return self.columns == list(range(len(self.columns)))

    def overflows(self, matrix: np.ndarray) -> np.ndarray:
        """Per row: True when scikit-learn would refuse it, or answer it arbitrarily."""
        mean, scale = self._arrays
        whole = self._leading and matrix.shape[1] == len(self.columns)
        values = (matrix if whole else matrix[:, self.columns]).astype(np.float64, copy=False)
        # The usual batch, in one reduction rather than the standardisation (NaN fails it).
        if values.size and np.abs(values).max() <= self._safe:
            return np.zeros(len(matrix), dtype=bool)
        with np.errstate(all="ignore"):
            z = (values - mean) / scale
            if self.limit == "float32":
                z = z.astype(np.float32)
            elif self.limit == "distances":
                return (np.abs(np.nan_to_num(z, nan=0.0)) > NEIGHBOURS_MAX_Z).any(axis=1)
        return np.isinf(z).any(axis=1)


class OnnxSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT
    task: Task
    classes: list[str] = []
    features: list[str]
    numeric: bool  # one float64 matrix in; else one input per column
    standardization: Standardization | None = None


def disagreement(ours: np.ndarray, theirs: np.ndarray, task: str) -> str | None:
    """None when both answer the same to TOLERANCE; else what differs. Rows where the reference
    itself is not finite are left out: serving refuses those rows (see `finite_rows`)."""
    if ours.shape != theirs.shape:
        return f"shape {ours.shape} instead of {theirs.shape}"
    with np.errstate(all="ignore"):
        ours_ok, theirs_ok = finite_rows(ours, task), finite_rows(theirs, task)
        # A row the reference answers must be answered (the same) here; one it cannot answer may
        # be refused here too, never answered otherwise.
        answered_otherwise = ours_ok & ~theirs_ok
        if answered_otherwise.any():
            return (
                f"{int(answered_otherwise.sum())} row(s) answered where the pipeline gives no finite answer"
            )
        both = ours_ok & theirs_ok
        if task == "regression":
            error = np.abs(ours[both] - theirs[both]) / np.maximum(np.abs(theirs[both]), 1.0)
        else:
            error = np.abs(ours[both] - theirs[both])
    worst = float(error.max()) if error.size else 0.0
    return None if worst <= TOLERANCE else f"largest difference {worst:.2e} (tolerance {TOLERANCE:g})"


def finite_rows(answers: np.ndarray, task: str) -> np.ndarray:
    """Rows with a usable answer: finite, and for a classifier probabilities that sum to 1."""
    if task == "regression":
        return np.isfinite(answers)
    # A NaN or infinite probability makes its row's sum NaN or infinite: the one test covers both.
    with np.errstate(all="ignore"):
        return np.abs(answers.sum(axis=1) - 1.0) <= TOLERANCE


def encode_rows(rows: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """Probe rows and answers for json.dumps: numbers stay floats (Python's json writes NaN and
    Infinity and reads them back exactly), categories stay strings."""
    cells = [[v if isinstance(v, str) else float(v) for v in row] for row in rows.tolist()]
    return {"rows": cells, "expected": expected.tolist()}


def decode_rows(payload: dict[str, Any], spec: OnnxSpec) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array(payload["rows"], dtype=np.float64 if spec.numeric else object)
    return rows, np.array(payload["expected"], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class OnnxModel:
    """Probabilities (classification) or values (regression) for a batch of raw feature rows."""

    spec: OnnxSpec
    session: Any = field(repr=False)  # onnxruntime.InferenceSession
    categorical: tuple[bool, ...] = ()  # per column, when the spec is not all-numeric
    output: str = ""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.spec.classes)

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        """One session run for the batch; NaN for the rows scikit-learn refuses (see
        Standardization), which the caller turns into a 422."""
        found = self.session.run([self.output], self.feed(matrix))[0]
        answers = np.asarray(found, dtype=np.float64)
        if self.spec.task == "regression":
            answers = answers.reshape(-1)
        guard = self.spec.standardization
        if guard is not None:
            overflow = guard.overflows(matrix)
            if overflow.any():
                answers[overflow] = np.nan
        return answers

    def feed(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        if self.spec.numeric:
            return {NUMERIC_INPUT: np.ascontiguousarray(matrix, dtype=np.float64)}
        inputs = {}
        for i, is_category in enumerate(self.categorical):
            column = matrix[:, i : i + 1]
            if is_category:
                inputs[column_input(i)] = np.array(
                    [[MISSING_CATEGORY if _is_gap(v) else str(v)] for v in column[:, 0]], dtype=object
                )
            else:
                inputs[column_input(i)] = column.astype(np.float64)
        return inputs

    @classmethod
    def from_bytes(cls, payload: bytes, threads: int = 1, check: bool = True) -> OnnxModel:
        """A session for the file, checked against the probe answers it carries."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
            metadata = session.get_modelmeta().custom_metadata_map
            spec = OnnxSpec.model_validate_json(metadata[SPEC_KEY])
        except Exception as exc:
            raise OnnxError(f"not a model file this service runs: {type(exc).__name__}: {exc}") from None
        if spec.format != FORMAT:
            raise OnnxError(f"format {spec.format}, this version reads {FORMAT}")
        if spec.task == "classification" and not spec.classes:
            raise OnnxError("no class order recorded")
        inputs = {i.name: i.type for i in session.get_inputs()}
        if spec.numeric:
            categorical: tuple[bool, ...] = ()
            expected_inputs = {NUMERIC_INPUT}
        else:
            categorical = tuple(
                inputs.get(column_input(i)) == "tensor(string)" for i in range(len(spec.features))
            )
            expected_inputs = {column_input(i) for i in range(len(spec.features))}
        if set(inputs) != expected_inputs:
            raise OnnxError(f"graph inputs {sorted(inputs)} are not {sorted(expected_inputs)}")
        outputs = [o.name for o in session.get_outputs()]
        output = (
            outputs[0]
            if spec.task == "regression"
            else next((name for name in outputs if "prob" in name), outputs[-1])
        )
        model = cls(spec, session, categorical, output)
        if check:
            try:
                rows, expected = decode_rows(json.loads(metadata[PROBE_KEY]), spec)
                with np.errstate(all="ignore"):
                    ours = model(rows)
            except Exception as exc:
                raise OnnxError(f"its probe rows cannot be checked: {type(exc).__name__}: {exc}") from None
            problem = disagreement(ours, expected, spec.task)
            if problem is not None:
                raise OnnxError(
                    f"its answers on the recorded probe rows differ from the recorded ones: {problem}"
                )
        return model


def _is_gap(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
