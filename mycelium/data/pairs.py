"""Pairs of real rows for a chained domain: two inputs side by side, labelled equal or not.

A pair row has the columns of its first row prefixed ``a.``, those of its second row prefixed
``b.``, and ``label`` 1 when the two rows have the same label, else 0. This is the request
format of a chained domain whose slots ``a`` and ``b`` read the same upstream domain.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mycelium.errors import ConfigError, EmptyDataError

LABEL_COLUMN = "label"
SLOTS = ("a", "b")


def make_pairs(frame: pd.DataFrame, n_pairs: int, *, equal_fraction: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Draw ``n_pairs`` pairs of distinct rows of ``frame``; ``equal_fraction`` of them share a label.

    Rows are drawn with replacement across pairs, so one row can appear in several pairs.
    Equal pairs are drawn within one class (classes chosen in proportion to their size), and
    unequal pairs from two different classes. The pairs come out in a seeded random order.

    Raises:
        EmptyDataError: ``frame`` has fewer than two rows.
        ConfigError: ``n_pairs`` is negative, ``equal_fraction`` is outside [0, 1], ``frame``
            has no ``label`` column, or it has too few classes or rows per class for the pairs.
    """
    if LABEL_COLUMN not in frame.columns:
        raise ConfigError(f"Pairs need a {LABEL_COLUMN!r} column to say which rows are equal; got {list(frame.columns)[:5]}.")
    if len(frame) < 2:
        raise EmptyDataError(f"Pairs need at least two rows, got {len(frame)}; prepare the source table first.")
    if n_pairs < 0:
        raise ConfigError(f"n_pairs must be >= 0, got {n_pairs}.")
    if not 0.0 <= equal_fraction <= 1.0:
        raise ConfigError(f"equal_fraction must be in [0, 1], got {equal_fraction}.")

    rng = np.random.default_rng(seed)
    labels = frame[LABEL_COLUMN].to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    members = {label: np.flatnonzero(labels == label) for label in classes}
    n_equal = int(round(equal_fraction * n_pairs))
    pairable = classes[counts >= 2]
    if n_equal and len(pairable) == 0:
        raise ConfigError("No class has two rows, so no equal pair can be drawn; lower equal_fraction to 0.")
    if n_pairs - n_equal and len(classes) < 2:
        raise ConfigError(f"All rows have label {classes[0]}, so no unequal pair can be drawn; set equal_fraction to 1.")

    first = np.empty(n_pairs, dtype=np.int64)
    second = np.empty(n_pairs, dtype=np.int64)
    weights = counts[counts >= 2] / counts[counts >= 2].sum()
    for index in range(n_equal):
        label = rng.choice(pairable, p=weights)
        first[index], second[index] = rng.choice(members[label], size=2, replace=False)
    for index in range(n_equal, n_pairs):
        label_a, label_b = rng.choice(classes, size=2, replace=False, p=counts / counts.sum())
        first[index] = rng.choice(members[label_a])
        second[index] = rng.choice(members[label_b])
    order = rng.permutation(n_pairs)
    first, second = first[order], second[order]

    features = frame.drop(columns=[LABEL_COLUMN])
    left = features.iloc[first].reset_index(drop=True).add_prefix(f"{SLOTS[0]}.")
    right = features.iloc[second].reset_index(drop=True).add_prefix(f"{SLOTS[1]}.")
    pairs = pd.concat([left, right], axis=1)
    pairs[LABEL_COLUMN] = (labels[first] == labels[second]).astype(np.int64)
    return pairs
