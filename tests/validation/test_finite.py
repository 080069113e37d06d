"""non_finite_columns on small frames with known results."""

import numpy as np
import pandas as pd

from mycelium.validation.finite import non_finite_columns


def test_finite_frame_has_no_problems():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4]})

    assert non_finite_columns(frame) == []


def test_each_bad_column_names_its_rows():
    frame = pd.DataFrame({
        "a": [1.0, np.nan, 3.0, np.inf],
        "b": [1.0, 2.0, 3.0, 4.0],
        "c": pd.Series(["1", "x", "3", None], dtype=object),
        "d": pd.Series(["1", "2", "3", "4"], dtype=object),
    })

    problems = {found.column: found for found in non_finite_columns(frame)}

    assert list(problems) == ["a", "c", "d"]
    assert problems["a"].numeric
    assert problems["a"].positions.tolist() == [1, 3]
    assert (problems["c"].numeric, problems["c"].dtype) == (False, "object")
    assert problems["c"].positions.tolist() == [1, 3]
    assert problems["d"].positions.tolist() == []


def test_columns_limit_the_check():
    frame = pd.DataFrame({"a": [np.nan], "b": [1.0]})

    assert non_finite_columns(frame, ["b"]) == []
