"""Standardization.overflows' shortcut (two reductions when every value is safely small) answers what the
full standardisation answers, for every limit, at every magnitude up to the limits and past them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from app.adapters.onnx_model import NEIGHBOURS_MAX_Z, Standardization

LIMITS = ["float64", "float32", "distances"]


def full(guard: Standardization, matrix: np.ndarray) -> np.ndarray:
    """The standardisation itself, without the shortcut."""
    mean, scale = np.asarray(guard.mean), np.asarray(guard.scale)
    with np.errstate(all="ignore"):
        z = (matrix[:, guard.columns].astype(np.float64) - mean) / scale
        if guard.limit == "float32":
            z = z.astype(np.float32)
        elif guard.limit == "distances":
            return (np.abs(np.nan_to_num(z, nan=0.0)) > NEIGHBOURS_MAX_Z).any(axis=1)
    return np.isinf(z).any(axis=1)


# Magnitudes around every threshold: small, near 1e6 (distances), near float32's and float64's maxima.
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e7, 1e7),
    st.floats(-1e39, 1e39),
    st.sampled_from([3.4e38, -3.4e38, 1.7e308, -1.7e308, 1e6, -1e6, 0.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.sampled_from(LIMITS),
    mean=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2),
    scale=st.lists(st.floats(1e-6, 1e6), min_size=2, max_size=2),
    matrix=arrays(np.float64, st.tuples(st.integers(1, 6), st.just(3)), elements=values),
)
def test_the_shortcut_answers_what_the_standardisation_answers(limit, mean, scale, matrix):
    guard = Standardization(columns=[0, 2], mean=mean, scale=scale, limit=limit)
    assert guard.overflows(matrix).tolist() == full(guard, matrix).tolist()


def test_a_row_far_out_is_refused_among_ordinary_ones():
    guard = Standardization(columns=[0, 1], mean=[5.0, 3.0], scale=[0.8, 0.4], limit="distances")
    assert guard.overflows(np.array([[5.1, 3.5], [6.0, 2.9]])).tolist() == [False, False]
    assert guard.overflows(np.array([[5.1, 3.5], [5e6, 2.9]])).tolist() == [False, True]
