"""A CSV chunk read by numpy's reader and by the csv module's alike, judged by the validator every
protocol shares, and its answers written in each format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.serving.answer_formats import CsvAnswer, JsonAnswer, NdjsonAnswer, RowTemplate, StreamError
from app.serving.csv_chunks import Chunk
from app.serving.csv_rows import CsvHeader, read_chunk
from app.serving.predictor import Answers, Predictor
from app.serving.validation import RowError
from tests.support.models import IRIS_FEATURES, write_model


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    folder: Path = tmp_path_factory.mktemp("iris")
    write_model(folder, "iris")
    return Predictor.load(folder, max_rows=3)


def chunk(text: str, first_line: int = 2) -> Chunk:
    return Chunk(text.encode(), first_line, 100)


def test_the_three_ways_of_reading_a_chunk_give_the_same_matrix(iris: Predictor) -> None:
    header = CsvHeader.read(
        Chunk(b"petal_width,sepal_length,sepal_width,petal_length\n", 1, 0), IRIS_FEATURES
    )
    lines = ["0.2,5.1,3.5,1.4", "2.3,6.9,3.1,5.8", "1.3,5.7,2.8,4.1", "0.4,5.4,3.9,1.7"]
    expected = np.array([[float(v) for v in (b, c, d, a)] for a, b, c, d in (x.split(",") for x in lines)])
    plain = read_chunk(chunk("\n".join(lines) + "\n"), header, iris.schema, 0, None)  # numpy's reader
    spaced_text = "\n".join(" " + x.replace(",", " ,") for x in lines)
    spaced = read_chunk(chunk(spaced_text), header, iris.schema, 0, None)
    # 1_0 is 10 to Python, not to numpy's reader: the csv module's path reads it as float() does.
    odd = read_chunk(chunk("\n".join([*lines, "1_0,5.1,3.5,1.4"])), header, iris.schema, 0, None)
    for rows in (plain, spaced):
        assert rows.model_input.matrix.tolist() == expected.tolist()
        iris.schema.validator.check(rows.model_input)
    assert odd.model_input.matrix.tolist() == [*expected.tolist(), [5.1, 3.5, 1.4, 10.0]]
    assert plain.echo == lines and spaced.echo == lines  # stripped, in the file's column order
    assert plain.lines() == spaced.lines() == [2, 3, 4, 5]


def test_a_bad_value_keeps_the_rows_before_it_and_names_its_row_in_the_file(iris: Predictor) -> None:
    header = CsvHeader.read(Chunk(",".join(IRIS_FEATURES).encode() + b"\n", 1, 0), IRIS_FEATURES)
    text = "\n".join(["5.1,3.5,1.4,0.2"] * 4 + ["5.1,abc,1.4,0.2", "", "5.1,3.5,nan,0.2", "5.1,3.5"])
    rows = read_chunk(chunk(text, first_line=10), header, iris.schema, first_row=1000, key=None)
    # Every row up to the malformed record is read; the validator judges them.
    assert len(rows.model_input) == 6 and len(rows.echo) == 6
    with pytest.raises(RowError) as refused:
        iris.schema.validator.check(rows.model_input)
    located = refused.value.at_lines(rows.lines(), 1000).errors
    found = [(e["row"], e["line"], e["field"], e["loc"][1], e["type"]) for e in located]
    assert found == [
        (1004, 14, "sepal_width", 1004, "float_parsing"),
        (1005, 16, "petal_length", 1005, "finite_number"),
    ]
    assert rows.model_input.head(4).matrix.tolist() == [[5.1, 3.5, 1.4, 0.2]] * 4
    assert rows.csv_error is not None and str(rows.csv_error) == "line 17: expected 4 fields, found 2"


def answers(probabilities: list[list[float]]) -> Answers:
    p = np.array(probabilities)
    return Answers(("setosa", "versicolor", "virginica"), label_index=p.argmax(axis=1), probabilities=p)


def test_probabilities_are_written_with_6_decimals_and_read_back_exactly() -> None:
    template = RowTemplate([",", None, ",", None, "\n"])
    assert template.fill(np.array([[0.0, 1.0], [1e-06, 0.999999]])) == [
        ",0.000000,1.000000\n",
        ",0.000001,0.999999\n",
    ]
    p = np.random.default_rng(0).random((10_000, 2)).round(6)
    written = template.fill(p)
    assert [[float(v) for v in row.split(",")[1:]] for row in written] == p.tolist()


def test_each_format_writes_rows_and_an_error_at_the_end(iris: Predictor) -> None:
    batch = answers([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7]])
    error = StreamError(
        422, [{"loc": ["instances", 7, "x"], "msg": "bad", "row": 7, "field": "x", "line": 9}], 9
    )
    ids, more = ["k-0", "k-1"], ["k-2", "k-3"]
    as_json = JsonAnswer(iris.metadata)
    document = as_json.opening() + as_json.rows([], batch, ids, True) + as_json.rows([], batch, more, False)
    parsed = json.loads(document + as_json.closing(error))
    assert len(parsed["predictions"]) == 4 and parsed["error"]["line"] == 9
    assert parsed["predictions"][1] == {
        "prediction_id": "k-1",
        "label": "virginica",
        "probabilities": {"setosa": 0.1, "versicolor": 0.2, "virginica": 0.7},
    }
    ndjson = NdjsonAnswer(iris.metadata)
    lines = (ndjson.rows([], batch, ids, True) + ndjson.closing(error)).splitlines()
    assert [json.loads(line).get("label") for line in lines] == ["setosa", "virginica", None]
    as_csv = CsvAnswer(iris.metadata, ["a", "b"])
    text = as_csv.opening() + as_csv.rows(["1,2", '"x,y",3'], batch, ids, True) + as_csv.closing(error)
    assert text.splitlines() == [
        "a,b,prediction_id,label,proba_setosa,proba_versicolor,proba_virginica",
        "1,2,k-0,setosa,0.900000,0.050000,0.050000",
        '"x,y",3,k-1,virginica,0.100000,0.200000,0.700000',
        "# error: line 9: x: bad",
    ]
