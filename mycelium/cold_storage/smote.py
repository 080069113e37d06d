"""Synthetic samples for few-shot fine-tuning: SMOTE settings, oversampling and the mini-buffer.

SMOTE interpolates between a sample and one of its ``k`` nearest neighbours of the same
class, so it needs ``k < class size``. Each class gets ``k = min(k_neighbors, size - 1)``,
and a class of one sample has no neighbour, so it is duplicated by random oversampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import imblearn
import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE, RandomOverSampler

from mycelium.errors import ConfigError, DataValidationError, EmptyDataError

logger = logging.getLogger(__name__)

SINGLE_CLASS_REASON = "single class: fine-tune skipped"


@dataclass(frozen=True)
class OversampleResult:
    """Oversampled features and labels, original rows first.

    ``skipped_reason`` is None when oversampling ran, and names the reason when the input
    was returned unchanged (``SINGLE_CLASS_REASON`` for a buffer of one class).
    """

    X: np.ndarray
    y: np.ndarray
    synthetic_count: int
    skipped_reason: str | None = None


def smote_settings(labels: np.ndarray, k_neighbors: int = 5, seed: int = 0) -> dict[str, Any]:
    """Return the JSON-serialisable SMOTE settings for a buffer with these labels.

    Each entry of ``classes`` has the ``label``, its ``count``, the effective
    ``k_neighbors`` and ``random_oversample`` (true for a class of one sample).
    ``single_class`` is true when the labels have fewer than two classes, in which case
    SMOTE cannot run and a fine-tune on the buffer is skipped.

    Raises:
        ConfigError: ``k_neighbors`` is below 1.
    """
    _check_k_neighbors(k_neighbors)
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    classes = [
        {
            "label": _json_scalar(value),
            "count": int(count),
            "k_neighbors": _effective_k(k_neighbors, int(count)),
            "random_oversample": bool(count == 1),
        }
        for value, count in zip(values, counts, strict=True)
    ]
    return {
        "method": "SMOTE",
        "k_neighbors": int(k_neighbors),
        "seed": int(seed),
        "classes": classes,
        "random_oversample_labels": [entry["label"] for entry in classes if entry["random_oversample"]],
        "single_class": len(classes) < 2,
        "imbalanced_learn_version": imblearn.__version__,
    }


def oversample(
    X: np.ndarray,
    y: np.ndarray,
    settings: dict[str, Any],
    *,
    target_per_class: int | None = None,
    seed: int = 0,
) -> OversampleResult:
    """Add synthetic samples until every class has ``target_per_class`` samples.

    The per-class ``k`` is recomputed from the classes of ``y`` with the requested
    ``settings["k_neighbors"]``, because ``y`` may be a subset of the buffer the settings
    were made for. Classes of one sample are duplicated with ``RandomOverSampler``. Classes
    already at or above the target are kept as they are, never undersampled.

    Args:
        X: features, shape ``(n_samples, n_features)``, finite numbers.
        y: labels, shape ``(n_samples,)``.
        settings: output of ``smote_settings``.
        target_per_class: samples per class after oversampling. Defaults to the size of
            the largest class.
        seed: random seed of SMOTE and random oversampling.

    Returns:
        The input rows followed by the synthetic rows. For a single-class ``y`` the input
        is returned unchanged with ``skipped_reason = SINGLE_CLASS_REASON``.

    Raises:
        EmptyDataError: ``X`` has no rows.
        DataValidationError: shapes disagree, or ``X`` is not numeric or contains NaN or
            infinite values (the error names the first row and column).
        ConfigError: ``settings`` has no valid ``k_neighbors`` or ``target_per_class`` is
            below 1.
    """
    X, y = _validate_samples(X, y)
    k_neighbors = settings.get("k_neighbors") if isinstance(settings, dict) else None
    _check_k_neighbors(k_neighbors)

    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2:
        logger.info(
            "Oversampling skipped for %d samples of label %s: %s.", len(y), values[0], SINGLE_CLASS_REASON
        )
        return OversampleResult(X=X, y=y, synthetic_count=0, skipped_reason=SINGLE_CLASS_REASON)

    if target_per_class is None:
        target_per_class = int(counts.max())
    if target_per_class < 1:
        raise ConfigError(f"Invalid target_per_class {target_per_class}: use a positive number of samples.")

    # Classes below the target, grouped by the sampler that fits their size.
    groups: dict[int, dict[Any, int]] = {}
    for value, count in zip(values, counts, strict=True):
        if count < target_per_class:
            k = _effective_k(k_neighbors, int(count))
            groups.setdefault(k, {})[value] = target_per_class

    synthetic_X = [X[:0]]
    synthetic_y = [y[:0]]
    for k, strategy in sorted(groups.items()):
        if k == 0:
            sampler = RandomOverSampler(sampling_strategy=strategy, random_state=seed)
        else:
            sampler = SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=seed)
        resampled_X, resampled_y = sampler.fit_resample(X, y)
        # imbalanced-learn returns the input rows first and appends the new rows.
        synthetic_X.append(np.asarray(resampled_X[len(X) :], dtype=X.dtype))
        synthetic_y.append(np.asarray(resampled_y[len(y) :], dtype=y.dtype))

    new_X = np.concatenate(synthetic_X)
    new_y = np.concatenate(synthetic_y)
    logger.info(
        "Oversampled %d samples of %d classes to %d per class: %d synthetic samples.",
        len(y),
        len(values),
        target_per_class,
        len(new_y),
    )
    return OversampleResult(
        X=np.concatenate([X, new_X]),
        y=np.concatenate([y, new_y]),
        synthetic_count=len(new_y),
    )


def balanced_buffer(
    df: pd.DataFrame,
    size: int,
    seed: int,
    label_column: str = "label",
    *,
    prefer_recent: bool = True,
) -> pd.DataFrame:
    """Select a class-balanced mini-buffer of at most ``size`` rows.

    Every class gets an equal share of ``size``. A class smaller than its share keeps all
    its rows, and the unused share goes to the larger classes. Selected rows keep their
    order in ``df``.

    Args:
        df: labelled samples. Row order is taken as time order when ``prefer_recent``.
        size: maximum number of rows, e.g. 500 to 1000.
        seed: random seed used when ``prefer_recent`` is False.
        label_column: name of the label column.
        prefer_recent: take the last rows of each class. If False, sample rows of each
            class uniformly at random.

    Raises:
        ConfigError: ``size`` is below 1.
        EmptyDataError: ``df`` has no rows.
        DataValidationError: the label column is missing or has missing values.
    """
    if size < 1:
        raise ConfigError(f"Invalid buffer size {size}: use a positive number of rows, e.g. 500.")
    if label_column not in df.columns:
        raise DataValidationError(
            f"Label column {label_column!r} not found in columns {list(df.columns)[:10]}: "
            "pass label_column with the name of the label column."
        )
    if df.empty:
        raise EmptyDataError("Cannot build a buffer from an empty frame: pass labelled samples.")
    missing = df[label_column].isna().to_numpy()
    if missing.any():
        first = df.index[np.flatnonzero(missing)[0]]
        raise DataValidationError(
            f"Label column {label_column!r} has {int(missing.sum())} missing values, first at "
            f"index {first!r}: label or drop those rows before building the buffer."
        )

    positions_by_class = df.groupby(label_column, sort=False).indices
    shares = _balanced_shares({label: len(positions) for label, positions in positions_by_class.items()}, size)
    rng = np.random.default_rng(seed)
    chosen = []
    for label, positions in positions_by_class.items():
        share = shares[label]
        if prefer_recent:
            chosen.append(positions[len(positions) - share :])
        else:
            chosen.append(np.sort(rng.choice(positions, size=share, replace=False)))
    return df.iloc[np.sort(np.concatenate(chosen))]


def _balanced_shares(counts: dict[Any, int], size: int) -> dict[Any, int]:
    # Water-filling: visit classes from smallest to largest. Each takes the lesser of its
    # count and an equal split of what is left, so a small class's unused share goes to
    # the larger classes.
    shares = {}
    remaining = size
    ordered = sorted(counts.items(), key=lambda item: item[1])
    for index, (label, count) in enumerate(ordered):
        share = min(count, remaining // (len(ordered) - index))
        shares[label] = share
        remaining -= share
    return shares


def _validate_samples(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    X = np.asarray(X)
    if X.dtype.kind != "f":
        # Integer features become float64, because synthetic samples lie between integers.
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DataValidationError(
                f"Features are not numeric ({exc}): encode categorical columns as numbers "
                "before oversampling."
            ) from exc
    if X.ndim != 2:
        raise DataValidationError(
            f"Features must have shape (n_samples, n_features), got {X.shape}: reshape them, "
            "e.g. flatten images to one row per sample."
        )
    if y.ndim != 1 or len(y) != len(X):
        raise DataValidationError(
            f"Labels have shape {y.shape} but features have {len(X)} rows: pass one label per row."
        )
    if len(X) == 0:
        raise EmptyDataError("Cannot oversample zero samples: pass the buffer's samples.")
    non_finite = ~np.isfinite(X)
    if non_finite.any():
        row, column = (int(index) for index in np.argwhere(non_finite)[0])
        raise DataValidationError(
            f"Features contain {int(non_finite.sum())} NaN or infinite values, first at row {row}, "
            f"column {column} (value {X[row, column]}): drop or impute those rows before oversampling."
        )
    if y.dtype.kind == "f" and np.isnan(y).any():
        row = int(np.flatnonzero(np.isnan(y))[0])
        raise DataValidationError(
            f"Labels contain NaN, first at row {row}: label or drop those rows before oversampling."
        )
    return X, y


def _check_k_neighbors(k_neighbors: Any) -> None:
    if isinstance(k_neighbors, bool) or not isinstance(k_neighbors, int | np.integer) or k_neighbors < 1:
        raise ConfigError(
            f"Invalid SMOTE k_neighbors {k_neighbors!r}: use a positive integer such as 5, or build "
            "the settings with smote_settings()."
        )


def _effective_k(k_neighbors: int, class_count: int) -> int:
    return min(int(k_neighbors), class_count - 1)


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
