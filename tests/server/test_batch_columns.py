"""How a batch's columns travel to a worker and become the model's DataFrame.

The front concatenates the requests' chunks (one array per column: pickling is per array), and
the worker makes columns of one numeric dtype one 2-D block (cheaper to build and to read).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neve.server.pool import concat_columns
from neve.server.worker import batch_frame


def test_chunks_are_concatenated_per_column_in_request_order() -> None:
    chunks = [
        [np.array([1.0, 2.0]), np.array([10, 20])],
        [np.array([3.0]), np.array([30])],
    ]
    a, b = concat_columns(chunks)
    assert a.tolist() == [1.0, 2.0, 3.0] and b.tolist() == [10, 20, 30]
    assert a.dtype == np.float64 and b.dtype == np.int64


def test_numeric_columns_of_one_dtype_make_one_block_equal_to_the_column_frame() -> None:
    names = pd.Index(["X", "Y", "Z"])
    columns = [np.arange(4, dtype=np.float64) + k for k in range(3)]
    frame = batch_frame(names, columns)
    expected = pd.DataFrame(dict(zip(names, columns, strict=True)))
    pd.testing.assert_frame_equal(frame, expected)
    assert frame.to_numpy().flags["C_CONTIGUOUS"]  # one 2-D block: read without interleaving
    assert len(frame._mgr.blocks) == 1


@pytest.mark.parametrize(
    "columns",
    [
        [np.array([1.0, 2.0]), np.array([1, 2])],  # mixed dtypes
        [np.array(["a", "b"], dtype=object), np.array(["c", "d"], dtype=object)],  # strings
        [np.array([1.0, 2.0]), np.array([[1.0, 2.0], [3.0, 4.0]])[:, 0]],  # a strided view
    ],
)
def test_other_columns_are_a_frame_of_their_own_columns(columns: list[np.ndarray]) -> None:
    names = pd.Index(["A", "B"])
    frame = batch_frame(names, columns)
    pd.testing.assert_frame_equal(frame, pd.DataFrame(dict(zip(names, columns, strict=True))))
    for name, column in zip(names, columns, strict=True):
        assert frame[name].tolist() == column.tolist()
        if column.dtype.kind in "biuf":
            assert frame[name].dtype == column.dtype


def test_a_column_count_that_does_not_match_the_signature_is_refused() -> None:
    with pytest.raises(ValueError, match="3 input columns for 2 names"):
        batch_frame(pd.Index(["A", "B"]), [np.zeros(2)] * 3)
