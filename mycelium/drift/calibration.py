"""Calibration of OOD thresholds on held-out in-domain rows, shared by every OOD score."""

from __future__ import annotations

import math

import numpy as np

from mycelium.errors import ConfigError


def require_holdout_rows(n_rows: int, target_fpr: float, min_tail_samples: int, *, name: str) -> None:
    """Raise ConfigError unless ``n_rows`` held-out rows can calibrate ``target_fpr``.

    A quantile estimated from fewer than ``min_tail_samples`` rows above it has a false-positive
    rate far from the target, so the holdout needs ``min_tail_samples / target_fpr`` rows.
    """
    required = math.ceil(min_tail_samples / target_fpr)
    if n_rows < required:
        raise ConfigError(
            f"{name} has {n_rows} rows but target_fpr={target_fpr} needs at least {required} "
            f"(min_tail_samples={min_tail_samples} / target_fpr); pass more held-out in-domain rows "
            "or raise target_fpr."
        )


def threshold_at_fpr(holdout_scores: np.ndarray, target_fpr: float) -> tuple[float, float]:
    """Return the threshold rejecting at most ``target_fpr`` of the holdout, and the rate it rejects.

    "higher" picks an observed score, so at most target_fpr of the holdout lies above it.
    """
    threshold = float(np.quantile(holdout_scores, 1 - target_fpr, method="higher"))
    return threshold, float(np.mean(holdout_scores > threshold))
