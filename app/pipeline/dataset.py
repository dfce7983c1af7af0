"""Load the data set named in params, check it, and decide the type of every column.

Every check names what is wrong where: the column, the CSV line, or the params key.
Lines are counted as in the file, the header being line 1.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from app.core.artifacts import Feature, Task
from app.pipeline.errors import PipelineError
from app.pipeline.params import DataParams


class DatasetSchema(BaseModel):
    """What prepare decided about the data set (data/processed/schema.json); train and evaluate build
    on it. Serving never reads it: model.json carries what serving needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    target: str
    task: Task
    features: list[Feature]
    classes: list[str] = []
    data_md5: str
    rows: int
    train_rows: int
    test_rows: int


SKLEARN_PREFIX = "sklearn:"
# A numeric-looking integer target with at most this many distinct values is a class label.
MAX_CLASSES_FOR_AUTO = 20
# A column where at least this share of values parse as numbers, but not all, is a typo, not a category.
NUMERIC_MAJORITY = 0.5


@dataclass(frozen=True)
class RawData:
    name: str  # what the source is called in messages
    csv_bytes: bytes


@dataclass(frozen=True)
class TypedData:
    frame: pd.DataFrame  # features then target, typed: float64 numeric, str/NaN categorical
    features: list[Feature]  # types only; ranges come from the training split
    target: str
    task: Task
    classes: list[str]


def load_source(params: DataParams) -> RawData:
    if params.source.startswith(SKLEARN_PREFIX):
        return _load_sklearn(params.source.removeprefix(SKLEARN_PREFIX))
    path = Path(params.source)
    if not path.is_file():
        raise PipelineError(f"data.source: file '{path}' not found")
    return RawData(name=str(path), csv_bytes=path.read_bytes())


def _snake_case(name: str) -> str:
    name = re.sub(r"\(.*?\)", "", name)  # drop units such as "(cm)"
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def _load_sklearn(name: str) -> RawData:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}", None)
    if loader is None or name in {
        "files",
        "sample_image",
        "sample_images",
        "svmlight_file",
        "svmlight_files",
    }:
        raise PipelineError(f"data.source: unknown sklearn data set '{name}' (try sklearn:iris)")
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns=_snake_case)
    target = "species" if name == "iris" else "target"
    frame = frame.rename(columns={"target": target})
    if "target_names" in bunch and len(bunch.target_names) > 0:
        frame[target] = [str(bunch.target_names[i]) for i in frame[target]]
    return RawData(name=f"sklearn:{name}", csv_bytes=frame.to_csv(index=False).encode())


def data_md5(raw: RawData) -> str:
    return hashlib.md5(raw.csv_bytes, usedforsecurity=False).hexdigest()


def parse(raw: RawData, params: DataParams) -> TypedData:
    frame = _read_csv(raw)
    target = target_name(raw, params)
    _check_columns(raw, frame, target, params)
    frame = frame.drop(columns=params.drop)

    missing_target = frame[target].isna().to_numpy()
    if missing_target.any():
        raise PipelineError(
            f"{raw.name}: target '{target}' is empty on line {_line(int(np.argmax(missing_target)))}"
        )

    features: list[Feature] = []
    typed = {}
    for column in frame.columns:
        if column == target:
            continue
        kind, values = _type_column(raw, frame[column], params)
        features.append(Feature(name=column, type=kind))
        typed[column] = values
    if not features:
        raise PipelineError(f"{raw.name}: no feature columns besides the target '{target}'")

    task = _task(raw, frame[target], params)
    if task == "regression":
        typed[target] = _numeric_or_fail(raw, frame[target], target)
        classes: list[str] = []
    else:
        typed[target] = frame[target].str.strip()
        classes = sorted(typed[target].unique())
        _check_classes(raw, typed[target], target, classes)
    return TypedData(pd.DataFrame(typed), features, target, task, classes)


def _read_csv(raw: RawData) -> pd.DataFrame:
    try:
        # Everything as text first: types are decided column by column, with line numbers.
        frame = pd.read_csv(io.BytesIO(raw.csv_bytes), dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise PipelineError(f"{raw.name}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{raw.name}: malformed CSV: {str(exc).strip()}") from None
    if frame.empty:
        raise PipelineError(f"{raw.name}: no data rows, only a header")
    frame.columns = [str(c).strip() for c in frame.columns]
    unnamed = [c for c in frame.columns if c.startswith("Unnamed:")]
    if unnamed:
        raise PipelineError(f"{raw.name}: the header has an empty column name (column {unnamed[0]})")
    return frame


def target_name(raw: RawData, params: DataParams) -> str:
    """The target column: data.target, or the one a scikit-learn data set names."""
    if params.target:
        return params.target
    if raw.name == "sklearn:iris":
        return "species"
    if raw.name.startswith(SKLEARN_PREFIX):
        return "target"
    raise PipelineError("data.target: name the target column of a CSV source")


def _check_columns(raw: RawData, frame: pd.DataFrame, target: str, params: DataParams) -> None:
    columns = set(frame.columns)
    if target not in columns:
        raise PipelineError(
            f"{raw.name}: target column '{target}' not found (columns: {', '.join(frame.columns)})"
        )
    for key in ("categorical", "numeric", "drop"):
        for column in getattr(params, key):
            if column not in columns:
                raise PipelineError(f"data.{key}: column '{column}' not found in {raw.name}")
            if column == target and key != "drop":
                raise PipelineError(f"data.{key}: '{column}' is the target, not a feature")
    if target in params.drop:
        raise PipelineError(f"data.drop: '{target}' is the target")


def _line(row_index: int) -> int:
    return row_index + 2  # the header is line 1


def _numeric_or_fail(raw: RawData, column: pd.Series, name: str) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    bad = (column.notna() & numbers.isna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise PipelineError(
            f"{raw.name}: column '{name}' is numeric but line {_line(row)} has {column.iloc[row]!r}"
        )
    infinite = np.isinf(numbers.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        row = int(np.argmax(infinite))
        raise PipelineError(f"{raw.name}: column '{name}' has an infinite value on line {_line(row)}")
    return numbers.astype(float)


def _type_column(raw: RawData, column: pd.Series, params: DataParams) -> tuple[str, pd.Series]:
    name = str(column.name)
    present = column.dropna()
    if present.empty:
        raise PipelineError(f"{raw.name}: column '{name}' has no values (list it in data.drop)")
    if name in params.categorical:
        return "categorical", column.str.strip()
    if name in params.numeric:
        return "numeric", _numeric_or_fail(raw, column, name)
    parsed = pd.to_numeric(present, errors="coerce")
    share_numeric = parsed.notna().mean()
    if share_numeric == 1.0:
        return "numeric", _numeric_or_fail(raw, column, name)
    if share_numeric >= NUMERIC_MAJORITY:
        _numeric_or_fail(raw, column, name)  # raises, naming the first line with text
    return "categorical", column.str.strip()


def _task(raw: RawData, target: pd.Series, params: DataParams) -> Task:
    if params.task != "auto":
        return params.task
    numbers = pd.to_numeric(target, errors="coerce")
    if numbers.isna().any():
        return "classification"
    integral = bool((numbers == numbers.round()).all())
    if integral and numbers.nunique() <= MAX_CLASSES_FOR_AUTO:
        return "classification"
    return "regression"


def _check_classes(raw: RawData, target: pd.Series, name: str, classes: list[str]) -> None:
    if len(classes) < 2:
        raise PipelineError(
            f"{raw.name}: target '{name}' has one class only ({classes[0]!r}): "
            "classification needs two or more"
        )
    counts = target.value_counts()
    rare = counts[counts < 2]
    if not rare.empty:
        raise PipelineError(
            f"{raw.name}: class {rare.index[0]!r} of target '{name}' has a single row: "
            "a stratified split needs at least two"
        )


def read_split(path: Path, features: list[Feature], target: str, task: Task) -> pd.DataFrame:
    """A processed split, read back with the column types prepare decided."""
    dtypes: dict[str, type] = {f.name: float if f.type == "numeric" else str for f in features}
    dtypes[target] = float if task == "regression" else str
    return pd.read_csv(path, dtype=dtypes)
