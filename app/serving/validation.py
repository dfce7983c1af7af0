"""One rule for every protocol's rows, checked on the whole matrix at once, and one vocabulary for
what is wrong with a row.

The rule: a batch of 1 to MAX_BATCH_ROWS rows (a CSV chunk: any number), finite numbers, a gap
only in a column that had gaps in training, categories seen in training. Every codec (the JSON
body, a CSV chunk, V2 tensors) decodes its request into the same matrix and masks (`ModelInput`),
and `Validator.check` decides on all of it with a few numpy calls: the valid path has no Python
loop per row. Only a refused batch is looked at row by row, to word its errors.

An error is one dict per bad cell, as /predict's 422 lists them: `loc`, `msg`, `type`, `row`,
`field` (a CSV adds `line`). `msg` says what is wrong and what was expected; the row and the
feature are named beside it, and `sentence()` puts the three together for the protocols whose
error is one string (V2's `{"error": ...}`, the CSV answer's closing line). The types keep the
names pydantic gave the same problems before (`finite_number`, `literal_error`, `too_long`), so a
client that switches on them keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.artifacts import Feature

NOT_FINITE = "finite_number"
MISSING_VALUE = "missing_value"
UNKNOWN_CATEGORY = "literal_error"
NOT_A_NUMBER = "float_parsing"  # a CSV cell that is no number: pydantic's name and words for it
NO_FINITE_ANSWER = "no_finite_answer"
TOO_SHORT, TOO_LONG = "too_short", "too_long"
_NOT_A_NUMBER_MSG = "Input should be a valid number, unable to parse string as a number"
# How many errors a one-string error (V2) lists before it says how many more.
LISTED = 5


class RowError(ValueError):
    """Validation failures, each naming the row (or CSV line) and the field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors

    def at_lines(self, lines: list[int], first_row: int = 0) -> RowError:
        """The same errors, each also naming its row's line in a CSV file (rows from `first_row` on)."""
        return RowError([e | {"line": lines[e["row"] - first_row]} if "row" in e else e for e in self.errors])

    def shifted(self, offset: int) -> RowError:
        """The errors of a batch that starts `offset` rows into its request, naming each row by its
        place in the request."""
        return RowError([_shift(e, offset) for e in self.errors]) if offset else self


def _shift(error: dict[str, Any], offset: int) -> dict[str, Any]:
    if "row" not in error:
        return error
    row = error["row"] + offset
    loc = error["loc"]
    return error | {"row": row, "loc": [loc[0], row, *loc[2:]] if len(loc) >= 2 else loc}


@dataclass(frozen=True, slots=True)
class ModelInput:
    """What every codec decodes a request (or a CSV chunk) into."""

    matrix: np.ndarray  # rows x features in model.json's order, float64 or (any categorical) object
    missing: np.ndarray | None = None  # True where the request left a value out; None: nowhere
    # True where a cell could not be read as its feature's type (a CSV cell "abc" in a numeric column).
    unreadable: np.ndarray | None = None
    first_row: int = 0  # the number of the matrix's first row in its request (a CSV chunk's place)
    key: str | None = None  # the request's key for prediction ids, when chunks share one
    batch_limit: bool = True  # False for a CSV chunk: MAX_BATCH_ROWS bounds JSON and V2 bodies only
    # True: a NaN in a numeric column is a gap, left out of `missing` (a JSON body has no NaN of its
    # own, so msgspec's None is its only source): the valid path need not look for gaps at all.
    nan_is_gap: bool = False

    def __len__(self) -> int:
        return len(self.matrix)

    def head(self, rows: int) -> ModelInput:
        """The first `rows` rows (a CSV chunk answers the rows before its first bad one)."""

        def cut(mask: np.ndarray | None) -> np.ndarray | None:
            return None if mask is None else mask[:rows]

        return ModelInput(
            self.matrix[:rows],
            cut(self.missing),
            cut(self.unreadable),
            self.first_row,
            self.key,
            False,
            self.nan_is_gap,
        )


def problem(row: int, feature: str | None, kind: str, msg: str) -> dict[str, Any]:
    """One error, as every protocol names it."""
    loc: list[Any] = ["instances", row] if feature is None else ["instances", row, feature]
    return {"loc": loc, "msg": msg, "type": kind, "row": row, "field": feature}


def sentence(error: dict[str, Any]) -> str:
    """One error as a sentence naming its row and feature: `row 1, 'sepal_width': not a finite ...`."""
    where = [f"row {error['row']}"] if "row" in error else []
    if error.get("field") is not None:
        where.append(repr(error["field"]))
    return f"{', '.join(where)}: {error['msg']}" if where else str(error["msg"])


def sentences(errors: list[dict[str, Any]]) -> str:
    """The first LISTED errors as sentences, and how many more there are."""
    more = f" (and {len(errors) - LISTED} more)" if len(errors) > LISTED else ""
    return "; ".join(sentence(e) for e in errors[:LISTED]) + more


def batch_size_error(rows: int, max_rows: int) -> RowError:
    kind = TOO_SHORT if rows < 1 else TOO_LONG
    counted = "no rows" if rows < 1 else f"{rows} rows"
    msg = f"the batch has {counted}; expected 1 to {max_rows} rows per request (MAX_BATCH_ROWS)"
    return RowError([{"loc": ["instances"], "msg": msg, "type": kind}])


def _range(feature: Feature) -> str:
    if feature.min is None or feature.max is None:
        return ""
    return f" (training range {feature.min:g} to {feature.max:g})"


def no_finite_answer(row: int, feature: Feature | None) -> dict[str, Any]:
    """A row the model answered with NaN or infinity; `feature`: the value far outside its range."""
    msg = "the model has no finite answer for this row"
    if feature is None:
        return {"loc": ["instances", row], "msg": msg, "type": NO_FINITE_ANSWER, "row": row}
    msg += f": {feature.name} is far outside the training range; expected a value near "
    msg += f"{feature.min:g} to {feature.max:g}"
    return problem(row, feature.name, NO_FINITE_ANSWER, msg)


class Validator:
    """The rule, for one model's features."""

    def __init__(self, features: list[Feature], max_rows: int) -> None:
        self.features = features
        self.max_rows = max_rows
        self._numeric = np.array([f.type == "numeric" for f in features])
        self._all_numeric = bool(self._numeric.all())
        self._gaps_allowed = np.array([f.missing_fraction > 0 for f in features])
        self._categories = [
            (j, f.categories, frozenset(f.categories))
            for j, f in enumerate(features)
            if f.type == "categorical" and f.categories
        ]
        # Each problem's words, per feature, made once.
        self._msg = {
            NOT_FINITE: [f"not a finite number; expected a finite number{_range(f)}" for f in features],
            MISSING_VALUE: [
                "missing; expected a value: this feature had no missing values in training" for _ in features
            ],
            UNKNOWN_CATEGORY: [
                "not a category seen in training; expected one of "
                + ", ".join(repr(c) for c in f.categories or ())
                for f in features
            ],
            NOT_A_NUMBER: [_NOT_A_NUMBER_MSG for _ in features],
        }

    def check(self, model_input: ModelInput) -> None:
        """Raises RowError naming every bad cell, rows in order, features in model.json's order."""
        matrix, missing, unreadable = model_input.matrix, model_input.missing, model_input.unreadable
        rows = len(matrix)
        if model_input.batch_limit and not 1 <= rows <= self.max_rows:
            raise batch_size_error(rows, self.max_rows)
        numbers = matrix if self._all_numeric else matrix[:, self._numeric].astype(np.float64)
        finite = np.isfinite(numbers)
        known = [set_.issuperset(matrix[:, j].tolist()) for j, _, set_ in self._categories]
        if missing is None and unreadable is None and finite.all() and all(known):
            return  # the valid path: a handful of numpy calls, whatever the batch's size
        if model_input.nan_is_gap:
            nan = np.zeros(matrix.shape, dtype=bool)
            nan[:, self._numeric] = np.isnan(numbers)
            missing = nan if missing is None else missing | nan
        bad: dict[str, np.ndarray] = {}
        if unreadable is not None:
            bad[NOT_A_NUMBER] = unreadable
        if missing is not None:
            bad[MISSING_VALUE] = missing & ~self._gaps_allowed
        not_finite = np.zeros(matrix.shape, dtype=bool)
        not_finite[:, self._numeric] = ~finite
        for mask in (missing, unreadable):
            if mask is not None:
                not_finite &= ~mask  # a gap or an unreadable cell is NaN in the matrix, and said so above
        bad[NOT_FINITE] = not_finite
        unknown = np.zeros(matrix.shape, dtype=bool)
        for (j, categories, _), all_known in zip(self._categories, known, strict=True):
            if not all_known:
                unknown[:, j] = ~np.isin(matrix[:, j], categories)
                if missing is not None:
                    unknown[:, j] &= ~missing[:, j]
        bad[UNKNOWN_CATEGORY] = unknown
        self._refuse(bad, model_input.first_row)

    def _refuse(self, bad: dict[str, np.ndarray], first_row: int) -> None:
        any_bad = np.logical_or.reduce(list(bad.values()))
        if not any_bad.any():
            return  # a gap where training had them, say
        errors = []
        # The refused cells only, row by row: the one loop over cells, and only on the error path.
        for row, column in zip(*(axis.tolist() for axis in np.nonzero(any_bad)), strict=True):
            kind = next(kind for kind, mask in bad.items() if mask[row, column])
            feature = self.features[column].name
            errors.append(problem(first_row + row, feature, kind, self._msg[kind][column]))
        raise RowError(errors)
