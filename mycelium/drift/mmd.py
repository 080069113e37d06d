"""Feature drift on expert embeddings: the maximum mean discrepancy (MMD) two-sample test.

Per-feature tests miss a change in how features vary together. MMD compares whole
distributions of embedding vectors: it is the distance between the mean embeddings of the
two samples in the feature space of a kernel (Gretton et al., "A kernel two-sample test",
JMLR 13, 2012).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mycelium.drift.base import DriftStatus
from mycelium.drift.feature_drift import _check_int, _json_float
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError

# Reference rows used for the median heuristic, which costs O(rows^2).
_BANDWIDTH_ROWS = 500


@dataclass(frozen=True)
class MMDDriftResult:
    """Outcome of one window tested by `MMDDriftTest`.

    `statistic` is the unbiased estimate of MMD^2, which can be slightly negative when the
    two samples come from one distribution. `effect_size` is MMD itself, sqrt(max(MMD^2, 0)):
    the distance between the kernel mean embeddings, between 0 and sqrt(2) for the RBF
    kernel. `score` is the effect size, compared with the calibrated `threshold`.
    """

    status: DriftStatus
    statistic: float | None
    effect_size: float | None
    threshold: float
    p_value: float | None
    bandwidth: float
    n_rows: int
    n_reference: int
    n_permutations: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def score(self) -> float | None:
        """The effect size, under the name the decision policy reads."""
        return self.effect_size

    def to_dict(self) -> dict[str, Any]:
        """Convert to plain JSON types: the status as its string value, NaN and infinity as None."""
        return {
            "status": self.status.value,
            "test_name": "mmd",
            "statistic": _json_float(self.statistic),
            "effect_size": _json_float(self.effect_size),
            "score": _json_float(self.effect_size),
            "threshold": _json_float(self.threshold),
            "p_value": _json_float(self.p_value),
            "bandwidth": _json_float(self.bandwidth),
            "n_rows": self.n_rows,
            "n_reference": self.n_reference,
            "n_permutations": self.n_permutations,
            "notes": list(self.notes),
        }


class MMDDriftTest:
    """Kernel two-sample test of a window of embeddings against reference embeddings.

    The kernel is the Gaussian (RBF) kernel ``k(x, y) = exp(-|x - y|^2 / (2 * bandwidth^2))``.
    The bandwidth is set by the median heuristic: the median Euclidean distance between
    distinct reference rows, ignoring zero distances (duplicate rows).

    A window drifts when two things hold, as in `FeatureDriftTest`:

    - its effect size MMD exceeds a threshold calibrated on the reference. On construction,
      `calibration_windows` contiguous blocks of `window_size` rows are drawn at seeded offsets,
      and each is compared with reference rows outside it. The threshold is
      ``quantile(their MMD, quantile) * margin``. A large sample makes a p-value small for
      differences too small to matter, so the p-value alone does not decide;
    - its permutation p-value is below `alpha`: the share of `n_permutations` random splits of
      the pooled rows whose MMD^2 is at least the observed one, ``(1 + count) / (1 + n_permutations)``.

    Each window is compared with `max_reference` reference rows drawn once with the seed, and
    each calibration block with as many rows drawn from outside it.

    The test detects only changes that the embeddings keep. On the NOAA rainfall data, the embeddings of
    the rainfall MLP moved less at the change after row 12,000 than between seasons of the
    reference, so MMD missed a change that the per-feature tests found
    (reports/benchmarks/detection.md).

    Parameters
    ----------
    reference
        Reference embeddings, shape (n_rows, n_dims). Rows with NaN or infinity are dropped.
    min_window
        Minimum number of finite rows in a window to test it.
    alpha
        Significance level of the permutation p-value. It must be at least
        ``1 / (1 + n_permutations)``, the smallest p-value the test can return.
    window_size
        Rows per calibration block: use the size of the windows that will be tested.
    calibration_windows
        Number of reference blocks tested to set the threshold.
    quantile, margin
        The threshold is the `quantile` of the calibration effect sizes times `margin` (>= 1).
    n_permutations
        Random splits drawn for each p-value.
    max_reference
        Reference rows each window is compared with.
    bandwidth
        Kernel bandwidth, or None to set it by the median heuristic.
    seed
        Seed of the reference sample, the calibration blocks and the permutations.

    Raises
    ------
    ConfigError
        If an argument is invalid or the reference has fewer than 2 * window_size finite rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> mmd = MMDDriftTest(rng.normal(size=(1000, 4)), window_size=100, n_permutations=100)
    >>> mmd.test(rng.normal(size=(100, 4))).status.value
    'stable'
    >>> mmd.test(rng.normal(size=(100, 4)) + [1.0, 0, 0, 0]).status.value
    'drift'
    """

    def __init__(
        self,
        reference: Any,
        *,
        min_window: int = 30,
        alpha: float = 0.01,
        window_size: int = 200,
        calibration_windows: int = 50,
        quantile: float = 0.99,
        margin: float = 1.5,
        n_permutations: int = 200,
        max_reference: int = 500,
        bandwidth: float | None = None,
        seed: int = 0,
    ) -> None:
        _check_int("min_window", min_window, minimum=2)
        _check_int("window_size", window_size, minimum=min_window)
        _check_int("calibration_windows", calibration_windows, minimum=10)
        _check_int("n_permutations", n_permutations, minimum=1)
        _check_int("max_reference", max_reference, minimum=2)
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
        if alpha < 1 / (1 + n_permutations):
            raise ConfigError(
                f"alpha={alpha} is below 1 / (1 + n_permutations) = {1 / (1 + n_permutations):.4g}, the smallest "
                f"p-value {n_permutations} permutations can give; raise n_permutations to at least {math.ceil(1 / alpha - 1)}."
            )
        if not 0 < quantile <= 1:
            raise ConfigError(f"quantile must be in (0, 1], got {quantile!r}.")
        if not math.isfinite(margin) or margin < 1:
            raise ConfigError(f"margin must be a finite number >= 1, got {margin!r}. Below 1 the reference itself would drift.")
        if bandwidth is not None and (not math.isfinite(bandwidth) or bandwidth <= 0):
            raise ConfigError(f"bandwidth must be a finite number > 0 or None for the median heuristic, got {bandwidth!r}.")

        rows = _as_rows(reference, "reference")
        finite = rows[np.all(np.isfinite(rows), axis=1)]
        if finite.shape[0] < 2 * window_size:
            raise ConfigError(
                f"reference has {finite.shape[0]} finite rows but calibration needs at least "
                f"2 * window_size = {2 * window_size}; pass more reference rows or a smaller window_size."
            )
        self.n_dims = finite.shape[1]
        self.min_window = min_window
        self.alpha = alpha
        self.window_size = window_size
        self.quantile = quantile
        self.margin = margin
        self.n_permutations = n_permutations
        self.seed = seed
        self.n_compare = min(max_reference, finite.shape[0] - window_size)

        rng = np.random.default_rng(seed)
        self._reference = finite[np.sort(rng.choice(finite.shape[0], self.n_compare, replace=False))]
        self.bandwidth = float(bandwidth) if bandwidth is not None else _median_heuristic(self._reference)
        self._reference_kernel = _rbf_kernel(self._reference, self._reference, self.bandwidth)
        self.calibration_effects = self._calibrate(finite, calibration_windows, rng)
        self.threshold = float(np.quantile(self.calibration_effects, quantile) * margin)

    def _calibrate(self, reference: np.ndarray, calibration_windows: int, rng: np.random.Generator) -> np.ndarray:
        """Return the MMD of reference blocks against reference rows outside each block."""
        starts = rng.integers(0, reference.shape[0] - self.window_size + 1, size=calibration_windows)
        effects = np.empty(calibration_windows)
        for index, start in enumerate(starts):
            inside = np.zeros(reference.shape[0], dtype=bool)
            inside[start : start + self.window_size] = True
            outside = np.flatnonzero(~inside)
            compare = reference[np.sort(rng.choice(outside, self.n_compare, replace=False))]
            block = reference[inside]
            kernel = _rbf_kernel(np.vstack([compare, block]), np.vstack([compare, block]), self.bandwidth)
            effects[index] = math.sqrt(max(_mmd2_from_kernel(kernel, self.n_compare), 0.0))
        return effects

    def _check_window(self, window: Any) -> np.ndarray:
        rows = _as_rows(window, "window", allow_empty=True)
        if rows.shape[0] == 0:
            raise EmptyDataError(
                f"The window is empty (shape {rows.shape}); the MMD test needs at least "
                f"min_window={self.min_window} rows, so collect more data before testing."
            )
        if rows.shape[1] != self.n_dims:
            raise DataValidationError(
                f"The window has {rows.shape[1]} dimensions but the reference has {self.n_dims}; "
                "pass embeddings of the same expert and layer."
            )
        return rows

    def test(self, window: Any) -> MMDDriftResult:
        """Test one window of embeddings against the reference.

        Raises
        ------
        EmptyDataError
            If the window has no rows.
        DataValidationError
            If the window's width differs from the reference's.
        """
        rows = self._check_window(window)
        finite = rows[np.all(np.isfinite(rows), axis=1)]
        notes = []
        dropped = rows.shape[0] - finite.shape[0]
        if dropped:
            notes.append(f"{dropped} rows with NaN or infinite values dropped.")
        if finite.shape[0] < self.min_window:
            notes.append(f"The window has {finite.shape[0]} finite rows, fewer than min_window={self.min_window}.")
            return self._result(DriftStatus.INSUFFICIENT_DATA, None, None, finite.shape[0], notes)
        if finite.shape[0] < self.window_size / 2 or finite.shape[0] > self.window_size * 2:
            notes.append(
                f"The window has {finite.shape[0]} rows but the threshold was calibrated on "
                f"{self.window_size}-row windows, so the comparison is approximate."
            )

        kernel = self._pooled_kernel(finite)
        statistic = _mmd2_from_kernel(kernel, self.n_compare)
        p_value = self._permutation_p_value(kernel, finite.shape[0], statistic)
        effect_size = math.sqrt(max(statistic, 0.0))
        drifted = effect_size > self.threshold and p_value < self.alpha
        status = DriftStatus.DRIFT if drifted else DriftStatus.STABLE
        return self._result(status, statistic, p_value, finite.shape[0], notes)

    def _result(self, status: DriftStatus, statistic: float | None, p_value: float | None, n_rows: int,
                notes: list[str]) -> MMDDriftResult:
        return MMDDriftResult(
            status=status,
            statistic=statistic,
            effect_size=None if statistic is None else math.sqrt(max(statistic, 0.0)),
            threshold=self.threshold,
            p_value=p_value,
            bandwidth=self.bandwidth,
            n_rows=n_rows,
            n_reference=self.n_compare,
            n_permutations=self.n_permutations,
            notes=tuple(notes),
        )

    def _pooled_kernel(self, window: np.ndarray) -> np.ndarray:
        """Return the kernel matrix of the reference sample followed by the window rows."""
        cross = _rbf_kernel(self._reference, window, self.bandwidth)
        within = _rbf_kernel(window, window, self.bandwidth)
        return np.block([[self._reference_kernel, cross], [cross.T, within]])

    def _permutation_p_value(self, kernel: np.ndarray, n_window: int, statistic: float) -> float:
        """Return the share of random relabellings of the pooled rows with an MMD^2 at least `statistic`.

        The generator is seeded afresh on each call, so a window's p-value does not depend on
        the windows tested before it.
        """
        n_pooled = kernel.shape[0]
        rng = np.random.default_rng(self.seed)
        # Column p marks the rows that permutation p puts in the window group.
        members = np.zeros((n_pooled, self.n_permutations))
        for column in range(self.n_permutations):
            members[rng.choice(n_pooled, n_window, replace=False), column] = 1.0
        statistics = _mmd2_of_groups(kernel, members, n_window)
        # A small tolerance keeps exact ties (a constant window) counted as ties.
        exceed = int(np.count_nonzero(statistics >= statistic - 1e-12))
        return (1 + exceed) / (1 + self.n_permutations)


def _as_rows(values: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    rows = np.asarray(values, dtype=np.float64)
    if rows.ndim == 1 and rows.size == 0 and allow_empty:
        return rows.reshape(0, 0)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise DataValidationError(
            f"{name} must be a 2-D array (rows, embedding dimensions), got shape {rows.shape}; "
            "reshape a single dimension with reshape(-1, 1)."
        )
    return rows


def _median_heuristic(rows: np.ndarray) -> float:
    """Return the median distance between distinct rows, or 1.0 when all rows are equal."""
    sample = rows[:_BANDWIDTH_ROWS]
    squared = _squared_distances(sample, sample)
    distances = np.sqrt(squared[np.triu_indices(sample.shape[0], k=1)])
    distances = distances[distances > 0]
    # NOTE: with all reference rows equal any bandwidth gives the same reference kernel;
    # 1.0 keeps windows that differ from the constant row measurable.
    return float(np.median(distances)) if distances.size else 1.0


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(squared, 0.0)


def _rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-_squared_distances(a, b) / (2.0 * bandwidth * bandwidth))


def _mmd2_from_kernel(kernel: np.ndarray, n_first: int) -> float:
    """Return the unbiased MMD^2 of the first `n_first` pooled rows against the others."""
    n_pooled = kernel.shape[0]
    members = np.zeros((n_pooled, 1))
    members[n_first:, 0] = 1.0
    return float(_mmd2_of_groups(kernel, members, n_pooled - n_first)[0])


def _mmd2_of_groups(kernel: np.ndarray, members: np.ndarray, n_second: int) -> np.ndarray:
    """Return the unbiased MMD^2 for each column of `members`, which marks the second group's rows.

    With Y the marked rows and X the others, the sums over pairs come from one matrix product:
    sum over Y x Y is ``a^T K a``, sum over Y x all is ``a^T K 1``, and the rest follow.
    Diagonal terms are removed, which makes the estimate unbiased.
    """
    n_first = kernel.shape[0] - n_second
    diagonal = np.diag(kernel)
    row_sums = kernel.sum(axis=1)
    total = row_sums.sum()
    second_second = np.sum(members * (kernel @ members), axis=0)
    second_all = members.T @ row_sums
    first_second = second_all - second_second
    first_first = total - 2.0 * first_second - second_second
    second_diagonal = members.T @ diagonal
    first_diagonal = diagonal.sum() - second_diagonal
    return (
        (first_first - first_diagonal) / (n_first * (n_first - 1))
        + (second_second - second_diagonal) / (n_second * (n_second - 1))
        - 2.0 * first_second / (n_first * n_second)
    )
