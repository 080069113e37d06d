"""Out-of-distribution scores: is an input from a known domain, or from a new one?

`MahalanobisOOD` is the score used to infer an input's domain and to detect new domains.
`energy_score` and `max_softmax` are baselines computed from logits. A classifier's maximum
softmax can be high on inputs unlike any it was trained on, so it is not enough on its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from mycelium.drift.calibration import require_holdout_rows, threshold_at_fpr
from mycelium.errors import ConfigError


class MahalanobisOOD:
    """Squared Mahalanobis distance to a Gaussian fitted on in-domain features.

    The covariance is estimated with Ledoit-Wolf shrinkage, so it stays invertible when
    features are collinear or constant, or when there are fewer rows than features. Because the
    shrinkage target is a scaled identity, features should be on comparable scales
    (standardized raw features, or a network's penultimate-layer activations).

    The acceptance threshold is calibrated on held-out in-domain rows: it is the
    (1 - target_fpr) quantile of their distances, so about `target_fpr` of in-domain inputs
    are rejected.

    Parameters
    ----------
    min_tail_samples
        Minimum expected number of held-out rows above the threshold. The holdout must have at
        least ``min_tail_samples / target_fpr`` rows, because a quantile estimated from fewer
        tail rows has a false-positive rate far from the target.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ood = MahalanobisOOD().fit(rng.normal(size=(500, 3)), rng.normal(size=(400, 3)), target_fpr=0.05)
    >>> ood.accepts(np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]])).tolist()
    [True, False]
    """

    def __init__(self, *, min_tail_samples: int = 10) -> None:
        if isinstance(min_tail_samples, bool) or not isinstance(min_tail_samples, int) or min_tail_samples < 1:
            raise ConfigError(f"min_tail_samples must be an integer >= 1, got {min_tail_samples!r}.")
        self.min_tail_samples = min_tail_samples
        self.mean: np.ndarray | None = None
        self.precision: np.ndarray | None = None
        self.threshold: float | None = None
        self.target_fpr: float | None = None
        self.calibrated_fpr: float | None = None
        self.n_train: int | None = None
        self.n_holdout: int | None = None

    @property
    def n_features(self) -> int | None:
        """Number of features the Gaussian was fitted on, or None before `fit`."""
        return None if self.mean is None else int(self.mean.shape[0])

    def fit(self, train_features: Any, holdout_features: Any, *, target_fpr: float) -> MahalanobisOOD:
        """Fit the Gaussian on training features and calibrate the threshold on held-out ones.

        Parameters
        ----------
        train_features
            In-domain features, shape (n_rows, n_features), numpy or torch.
        holdout_features
            Other in-domain rows, not used to fit the Gaussian, with the same features.
        target_fpr
            Fraction of in-domain inputs that may be rejected, in (0, 1).

        Raises
        ------
        ConfigError
            If target_fpr is outside (0, 1) or the holdout is too small for it.
        ValueError
            If features are not 2-D, have different widths, or contain NaN or infinity.
        """
        if not 0 < target_fpr < 1:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}.")
        train = _as_features(train_features, "train_features")
        holdout = _as_features(holdout_features, "holdout_features", n_features=train.shape[1])
        if train.shape[0] < 2:
            raise ValueError(f"train_features has {train.shape[0]} rows, but fitting a covariance needs at least 2.")
        require_holdout_rows(holdout.shape[0], target_fpr, self.min_tail_samples, name="holdout_features")

        estimator = LedoitWolf(store_precision=True, assume_centered=False).fit(train)
        self.mean = estimator.location_.astype(np.float64)
        self.precision = estimator.precision_.astype(np.float64)
        holdout_scores = self.score(holdout)
        self.threshold, self.calibrated_fpr = threshold_at_fpr(holdout_scores, target_fpr)
        self.target_fpr = float(target_fpr)
        self.n_train = int(train.shape[0])
        self.n_holdout = int(holdout.shape[0])
        return self

    def score(self, features: Any) -> np.ndarray:
        """Compute the squared Mahalanobis distance of each row; higher means farther from the domain.

        Raises
        ------
        RuntimeError
            If the detector is not fitted.
        ValueError
            If the features have the wrong width or contain NaN or infinity.
        """
        if self.mean is None or self.precision is None:
            raise RuntimeError("MahalanobisOOD is not fitted. Call fit() or from_tensors() first.")
        centered = _as_features(features, "features", n_features=self.mean.shape[0]) - self.mean
        return np.einsum("ij,jk,ik->i", centered, self.precision, centered)

    def accepts(self, features: Any) -> np.ndarray:
        """Return a boolean per row: True when the row's distance is at most the threshold."""
        scores = self.score(features)
        return scores <= self.threshold

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Return the fitted mean and precision matrix as float64 tensors, for safetensors."""
        if self.mean is None or self.precision is None:
            raise RuntimeError("MahalanobisOOD is not fitted, so there is no state to save. Call fit() first.")
        return {"mean": torch.from_numpy(self.mean.copy()), "precision": torch.from_numpy(self.precision.copy())}

    def metadata(self) -> dict[str, Any]:
        """Return the JSON part of the state: threshold, target and measured FPR, sizes."""
        if self.threshold is None:
            raise RuntimeError("MahalanobisOOD is not fitted, so there is no state to save. Call fit() first.")
        return {
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "calibrated_fpr": self.calibrated_fpr,
            "n_features": self.n_features,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "min_tail_samples": self.min_tail_samples,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> MahalanobisOOD:
        """Rebuild a fitted detector from `to_tensors()` and `metadata()` output.

        Raises
        ------
        ValueError
            If a tensor is missing, its shape does not match ``metadata["n_features"]``, or a
            value is not finite.
        """
        missing = sorted({"mean", "precision"} - set(tensors))
        if missing:
            raise ValueError(f"The tensors lack {missing}; pass the output of MahalanobisOOD.to_tensors().")
        n_features = int(metadata["n_features"])
        mean = tensors["mean"].detach().cpu().to(torch.float64).numpy()
        precision = tensors["precision"].detach().cpu().to(torch.float64).numpy()
        if mean.shape != (n_features,) or precision.shape != (n_features, n_features):
            raise ValueError(
                f"Tensor shapes mean {tuple(mean.shape)} and precision {tuple(precision.shape)} do not "
                f"match n_features={n_features} in the metadata; the state files belong to different fits."
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(precision))):
            raise ValueError("The mean or precision tensor contains NaN or infinity; refit the detector.")
        threshold = float(metadata["threshold"])
        if not math.isfinite(threshold):
            raise ValueError(f"The metadata threshold {threshold!r} is not finite; refit the detector.")

        detector = cls(min_tail_samples=int(metadata.get("min_tail_samples", 10)))
        detector.mean = mean
        detector.precision = precision
        detector.threshold = threshold
        detector.target_fpr = metadata.get("target_fpr")
        detector.calibrated_fpr = metadata.get("calibrated_fpr")
        detector.n_train = metadata.get("n_train")
        detector.n_holdout = metadata.get("n_holdout")
        return detector


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Compute the negative free energy ``T * logsumexp(logits / T)`` over the last dimension.

    Higher means more in-distribution. The free energy ``-T * logsumexp(logits / T)`` is low
    for inputs like the training data, so its negative is high for them.
    """
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}.")
    _check_logits(logits)
    return temperature * torch.logsumexp(logits / temperature, dim=-1)


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Compute the maximum softmax probability over the last dimension; higher means more confident."""
    _check_logits(logits)
    return torch.softmax(logits, dim=-1).max(dim=-1).values


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim == 0:
        raise ValueError(
            f"logits must be a floating-point torch.Tensor with a class dimension, got {type(logits).__name__} "
            f"{getattr(logits, 'shape', '')}."
        )


def _as_features(features: Any, name: str, *, n_features: int | None = None) -> np.ndarray:
    """Convert numpy or torch features to a 2-D float64 array and check them."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim == 1 and n_features is not None and array.shape[0] == n_features:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, features), got shape {array.shape}.")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(f"{name} has {array.shape[1]} features but the detector expects {n_features}.")
    bad_rows = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
    if bad_rows.size:
        raise ValueError(
            f"{name} contains NaN or infinity in {bad_rows.size} rows (first: row {bad_rows[0]}); "
            "impute or drop those rows before scoring."
        )
    return array
