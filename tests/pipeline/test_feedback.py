"""Labelled predictions as rows of the training data: placed under the data's columns, checked by
prepare's own parse, left out (and counted) when their features are not the data's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.messages import FeedbackRow
from app.pipeline.dataset import RawData, parse
from app.pipeline.errors import PipelineError
from app.pipeline.feedback import add_feedback
from app.pipeline.params import DataParams

LOANS = RawData(
    name="loans.csv",
    csv_bytes=b"id,age,city,approved\n1,30,paris,yes\n2,41,lyon,no\n3,25,lille,yes\n4,52,paris,no\n",
)
PARAMS = DataParams(source="loans.csv", target="approved", drop=["id"])


def rows_file(tmp_path: Path, *rows: FeedbackRow) -> Path:
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(row.model_dump_json() + "\n" for row in rows))
    return path


def logged(label: str | None = None, value: float | None = None, **features: object) -> FeedbackRow:
    return FeedbackRow(features=json.dumps(features), label=label, value=value)


def test_rows_go_after_the_header_in_the_datas_columns(tmp_path: Path) -> None:
    feedback = rows_file(
        tmp_path, logged("yes", age=33.0, city="lyon"), logged("no", age=None, city="nantes, west")
    )
    raw, outcome = add_feedback(LOANS, feedback, PARAMS)
    assert (outcome.rows, outcome.refused, outcome.reason) == (2, 0, None)
    assert raw.name == "loans.csv with 2 labelled predictions (lines 2-3)"
    lines = raw.csv_bytes.decode().splitlines()
    # data.drop's column stays empty (serving never sees it); a missing value is an empty cell.
    assert lines[:3] == ["id,age,city,approved", ",33.0,lyon,yes", ',,"nantes, west",no']
    assert lines[3:] == LOANS.csv_bytes.decode().splitlines()[1:]
    data = parse(raw, PARAMS)
    assert len(data.frame) == 6 and data.frame["city"].iloc[1] == "nantes, west"


def test_a_row_whose_features_are_not_the_datas_is_left_out_and_counted(tmp_path: Path) -> None:
    feedback = rows_file(
        tmp_path,
        logged("yes", years=33.0, city="lyon"),  # "age" renamed since
        logged("no", age=40.0),
        FeedbackRow(features="[1, 2]", label="no"),
        logged("no", age=40.0, city="lyon"),
    )
    raw, outcome = add_feedback(LOANS, feedback, PARAMS)
    assert (outcome.rows, outcome.refused) == (1, 3)
    assert outcome.reason == "feature 'years' is not a column of loans.csv"
    assert raw.name == "loans.csv with 1 labelled prediction (line 2)"


def test_no_row_to_add_leaves_the_data_as_it_is(tmp_path: Path) -> None:
    raw, outcome = add_feedback(LOANS, rows_file(tmp_path), PARAMS)
    assert raw == LOANS and (outcome.rows, outcome.refused) == (0, 0)


def test_a_value_prepare_refuses_fails_naming_the_line_of_the_logged_row(tmp_path: Path) -> None:
    numeric = DataParams(source="loans.csv", target="approved", drop=["id"], numeric=["age"])
    feedback = rows_file(tmp_path, logged("yes", age=33.0, city="lyon"), logged("no", age="old", city="x"))
    raw, _ = add_feedback(LOANS, feedback, numeric)
    with pytest.raises(PipelineError) as refused:
        parse(raw, numeric)
    assert str(refused.value) == (
        "loans.csv with 2 labelled predictions (lines 2-3): column 'age' is numeric but line 3 has 'old'"
    )


def test_a_regression_target_takes_the_logged_value(tmp_path: Path) -> None:
    prices = RawData(name="prices.csv", csv_bytes=b"size,price\n10,1.5\n20,3.0\n")
    raw, _ = add_feedback(
        prices, rows_file(tmp_path, logged(value=2.25, size=15.0)), DataParams(target="price")
    )
    assert raw.csv_bytes.decode().splitlines()[1] == "15.0,2.25"
