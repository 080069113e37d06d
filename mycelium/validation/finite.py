"""Inputs that are not finite numbers, which no expert or OOD score can take.

Routing without Great Expectations still needs this check: untagged rows have no domain
expectations yet, and ``--no-validate`` skips them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class NonFiniteColumn:
    """A column whose dtype is not numeric or that contains values that are not finite numbers.

    ``positions`` are the 0-based positions of the rows whose value is NaN, infinite or text
    that does not read as a number. A text column whose values all read as numbers has none.
    """

    column: str
    dtype: str
    numeric: bool
    positions: np.ndarray


def non_finite_columns(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[NonFiniteColumn]:
    """Return the columns of ``frame`` (by default all of them) that are not numeric or contain
    values that are not finite numbers, in column order.

    The list is empty when every column is numeric and every value finite.
    """
    problems = []
    for column in frame.columns if columns is None else columns:
        values = frame[column]
        numeric = pd.api.types.is_numeric_dtype(values)
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        positions = np.flatnonzero(~np.isfinite(numbers))
        if numeric and len(positions) == 0:
            continue
        problems.append(NonFiniteColumn(str(column), str(values.dtype), numeric, positions))
    return problems
