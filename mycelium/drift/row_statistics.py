"""Mahalanobis distance on summary statistics of each input row: a check for degenerate inputs.

A blank image lies close to the mean of a digit domain in pixel space, so both the
reconstruction error and the Mahalanobis distance on pixels can be lower for it than for
real digits. Its row statistics give it away: a blank row has no spread at all, and uniform
noise has far more ink than any digit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mycelium.drift.ood import MahalanobisOOD, _as_features

ROW_STATISTICS = ("mean", "std", "min", "p10", "p50", "p90", "max")
"""Statistics computed over the features of each row, in this order."""


def row_statistics(inputs: Any) -> np.ndarray:
    """Return, for each row, the statistics named in `ROW_STATISTICS`, shape (n_rows, 7).

    Raises
    ------
    ValueError
        If the inputs are not a non-empty 2-D array of finite values.
    """
    rows = _as_features(inputs, "inputs")
    percentiles = np.percentile(rows, [10, 50, 90], axis=1).T
    return np.column_stack([rows.mean(axis=1), rows.std(axis=1), rows.min(axis=1), percentiles, rows.max(axis=1)])


class RowStatisticsOOD:
    """Squared Mahalanobis distance of a row's summary statistics to those of the domain.

    The statistics (`ROW_STATISTICS`) mix all features of a row, so use it for inputs whose
    features share one scale: image pixels, or features already standardized. It
    separates two similar domains poorly, and is meant as one
    component of a `CombinedOOD`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> images = rng.uniform(0, 1, size=(900, 64)) * (rng.uniform(size=(900, 64)) < 0.3)
    >>> ood = RowStatisticsOOD().fit(images[:500], images[500:], target_fpr=0.05)
    >>> ood.accepts(np.vstack([images[:1], np.zeros((1, 64))])).tolist()
    [True, False]
    """

    def __init__(self, *, min_tail_samples: int = 10) -> None:
        self.mahalanobis = MahalanobisOOD(min_tail_samples=min_tail_samples)
        self.n_features: int | None = None

    @property
    def threshold(self) -> float | None:
        """Calibrated threshold on the squared distance, or None before `fit`."""
        return self.mahalanobis.threshold

    @property
    def calibrated_fpr(self) -> float | None:
        """Fraction of the holdout above the threshold, or None before `fit`."""
        return self.mahalanobis.calibrated_fpr

    def fit(self, train_inputs: Any, holdout_inputs: Any, *, target_fpr: float) -> RowStatisticsOOD:
        """Fit the Gaussian on training rows' statistics and calibrate on held-out rows'.

        Raises
        ------
        ConfigError
            If target_fpr is outside (0, 1) or the holdout is too small for it.
        ValueError
            If the inputs are not 2-D, have different widths, or contain NaN or infinity.
        """
        train = _as_features(train_inputs, "train_inputs")
        holdout = _as_features(holdout_inputs, "holdout_inputs", n_features=train.shape[1])
        self.mahalanobis.fit(row_statistics(train), row_statistics(holdout), target_fpr=target_fpr)
        self.n_features = int(train.shape[1])
        return self

    def score(self, inputs: Any) -> np.ndarray:
        """Compute the squared Mahalanobis distance of each row's statistics. Higher means farther.

        Raises
        ------
        RuntimeError
            If the detector is not fitted.
        ValueError
            If the inputs have the wrong width or contain NaN or infinity.
        """
        if self.n_features is None:
            raise RuntimeError("RowStatisticsOOD is not fitted. Call fit() or from_tensors() first.")
        return self.mahalanobis.score(row_statistics(_as_features(inputs, "inputs", n_features=self.n_features)))

    def accepts(self, inputs: Any) -> np.ndarray:
        """Return a boolean per row: True when the row's distance is at most the threshold."""
        return self.score(inputs) <= self.threshold

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Return the mean and precision matrix of the statistics, for safetensors."""
        return self.mahalanobis.to_tensors()

    def metadata(self) -> dict[str, Any]:
        """Return the JSON part of the state: the Mahalanobis metadata and the input width."""
        return self.mahalanobis.metadata() | {"n_input_features": self.n_features, "statistics": list(ROW_STATISTICS)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> RowStatisticsOOD:
        """Rebuild a fitted detector from `to_tensors()` and `metadata()` output.

        Raises
        ------
        ValueError
            If the statistics differ from `ROW_STATISTICS`, or the Mahalanobis state is invalid.
        """
        if list(metadata.get("statistics", [])) != list(ROW_STATISTICS):
            raise ValueError(
                f"The state was saved with statistics {metadata.get('statistics')}, but this version computes "
                f"{list(ROW_STATISTICS)}; refit the detector."
            )
        detector = cls(min_tail_samples=int(metadata.get("min_tail_samples", 10)))
        detector.mahalanobis = MahalanobisOOD.from_tensors(tensors, metadata)
        detector.n_features = int(metadata["n_input_features"])
        return detector
