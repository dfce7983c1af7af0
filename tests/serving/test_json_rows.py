"""The msgspec fast path and the pydantic parsing model accept the same bodies and build the same model
input (matrix and gaps): a body the fast path refuses goes to pydantic, whose 422 names every bad row
and field; the values are the validator's to judge either way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.core.artifacts import ModelMetadata
from app.serving.schema import RequestSchema
from app.serving.validation import ModelInput
from tests.support.models import write_model

MAX_ROWS = 5


@pytest.fixture(scope="module", params=["iris", "iris with gaps", "colors"])
def schema(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RequestSchema:
    kind = request.param.split()[0]
    folder: Path = tmp_path_factory.mktemp(kind)
    write_model(folder, kind)
    metadata = ModelMetadata.read(folder)
    if request.param == "iris with gaps":
        # All numeric, one column allowed to be missing: null is a gap (NaN), not a refusal.
        features = [metadata.features[0].model_copy(update={"missing_fraction": 0.1})]
        metadata = metadata.model_copy(update={"features": features + metadata.features[1:]})
    return RequestSchema.build(metadata, MAX_ROWS)


def _values(schema: RequestSchema) -> st.SearchStrategy:
    """Values a client might send for any field: good ones, near misses and nonsense."""
    categories = sorted({c for f in schema.features for c in (f.categories or [])})
    return st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.sampled_from([*categories, "", "purple", "5.1", "1e400", "NaN"]),
        st.none(),
        st.booleans(),
        st.just([1.0]),
    )


def _bodies(schema: RequestSchema) -> st.SearchStrategy[bytes]:
    names = [f.name for f in schema.features]
    row = st.fixed_dictionaries(
        {name: _values(schema) for name in names},
        optional={"extra": st.just(1), names[0] + " ": st.just(1.0)},
    )
    # Rows with a field left out, too.
    row = st.one_of(row, row.map(lambda r: dict(list(r.items())[1:])))
    instances = st.lists(row, min_size=0, max_size=MAX_ROWS + 1)
    document = st.one_of(
        st.builds(lambda rows: {"instances": rows}, instances),
        st.builds(lambda rows: {"instances": rows, "more": 1}, instances),
        st.just({"rows": []}),
    )
    return document.map(lambda d: json.dumps(d).encode())


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    for x, y in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y or type(x) is not type(y):
            return False
    return True


def _gaps(model_input: ModelInput) -> np.ndarray:
    matrix = model_input.matrix
    gaps = np.zeros(matrix.shape, bool) if model_input.missing is None else model_input.missing
    if model_input.nan_is_gap:  # every NaN of an all-numeric body is a gap
        gaps = gaps | np.isnan(matrix.astype(np.float64))
    return gaps


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_fast_path_reads_exactly_what_pydantic_reads(schema: RequestSchema, data: st.DataObject):
    body = data.draw(_bodies(schema))
    fast = schema.fast.decode(body)
    try:
        request = schema.parse_model.model_validate_json(body)
    except ValidationError:
        assert fast is None, body  # the 422 comes from pydantic, naming every problem
        return
    expected = schema.fast.assemble([tuple(r.__dict__.values()) for r in request.instances])  # type: ignore[attr-defined]
    if fast is not None:
        assert _same(fast.matrix, expected.matrix), body
        assert (_gaps(fast) == _gaps(expected)).all(), body


def test_valid_bodies_take_the_fast_path(schema: RequestSchema):
    row = {}
    for feature in schema.features:
        row[feature.name] = (feature.categories or ["x"])[0] if feature.type == "categorical" else 1.5
    decoded = schema.fast.decode(json.dumps({"instances": [row, row]}).encode())
    assert decoded is not None
    schema.validator.check(decoded)
