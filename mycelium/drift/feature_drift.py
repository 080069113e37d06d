"""Feature drift: two-sample tests of a window of rows against a reference sample.

The decision rests on effect sizes, not on p-values. With hundreds of rows per window and
data that varies with the season, a KS test rejects equality for nearly every window, even for
windows cut from the reference itself. So each feature's effect size is compared with a
threshold calibrated on windows drawn from the reference. The p-values, corrected for
multiple testing, are reported beside them and must also agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from mycelium.drift.base import DriftDetector, DriftStatus, WindowResult, WindowTest
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError

PSEUDO_COUNT = 0.5
"""Count added to every bin of a feature when one of its bins is empty (chi-square and PSI)."""

PSI_BINS = 10
TOP_FEATURES = 3
_CORRECTIONS = ("bonferroni", "holm")


@dataclass(frozen=True)
class FeatureDriftResult:
    """Outcome of one window tested by `FeatureDriftTest`.

    `score` is the effect size of the deciding feature and `threshold` is that feature's
    calibrated threshold. The deciding feature is the drifted feature with the largest
    ratio of effect size to threshold, or the largest ratio overall when none drifted.
    Per-feature fields map each feature name to a value, or to None when the feature was
    not tested (no values in the window, or fewer than `min_window`).
    """

    status: DriftStatus
    score: float | None
    threshold: float | None
    score_feature: str | None
    statistic: dict[str, float | None]
    effect_size: dict[str, float | None]
    feature_threshold: dict[str, float]
    p_value: dict[str, float | None]
    p_value_adjusted: dict[str, float | None]
    psi: dict[str, float | None]
    test_name: dict[str, str]
    drifted_features: tuple[str, ...]
    top_features: tuple[str, ...]
    n_rows: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Convert to plain JSON types: the status as its string value, NaN and infinity as None."""
        return {
            "status": self.status.value,
            "score": _json_float(self.score),
            "threshold": _json_float(self.threshold),
            "score_feature": self.score_feature,
            "statistic": _json_floats(self.statistic),
            "effect_size": _json_floats(self.effect_size),
            "feature_threshold": _json_floats(self.feature_threshold),
            "p_value": _json_floats(self.p_value),
            "p_value_adjusted": _json_floats(self.p_value_adjusted),
            "psi": _json_floats(self.psi),
            "test_name": dict(self.test_name),
            "drifted_features": list(self.drifted_features),
            "top_features": list(self.top_features),
            "n_rows": self.n_rows,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _FeatureTest:
    statistic: float
    effect_size: float
    p_value: float
    smoothed: bool


class _FeatureReference:
    """Reference values of one feature, prepared once for every window."""

    def __init__(self, name: str, values: np.ndarray, is_discrete: bool) -> None:
        self.name = name
        self.values = np.sort(values)
        self.is_discrete = is_discrete
        self.test_name = "chi2" if self.is_discrete else "ks"
        self.categories, counts = np.unique(self.values, return_counts=True)
        self.category_counts = counts.astype(float)
        # Inner edges of the PSI bins. Ties in the reference merge bins, so there may be fewer than 10.
        quantiles = np.quantile(self.values, np.linspace(0, 1, PSI_BINS + 1)[1:-1])
        self.psi_edges = np.unique(quantiles)
        self.psi_counts = self._psi_bin_counts(self.values)

    def _psi_bin_counts(self, values: np.ndarray) -> np.ndarray:
        bins = np.searchsorted(self.psi_edges, values, side="right")
        return np.bincount(bins, minlength=self.psi_edges.size + 1).astype(float)

    def _category_table(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Count reference and window values over the union of their categories."""
        window_categories, window_counts = np.unique(values, return_counts=True)
        categories = np.union1d(self.categories, window_categories)
        reference_row = np.zeros(categories.size)
        reference_row[np.searchsorted(categories, self.categories)] = self.category_counts
        window_row = np.zeros(categories.size)
        window_row[np.searchsorted(categories, window_categories)] = window_counts
        return reference_row, window_row

    def test(self, values: np.ndarray) -> _FeatureTest:
        """Run the two-sample test of this feature: KS if continuous, chi-square if discrete."""
        if not self.is_discrete:
            result = stats.ks_2samp(self.values, values)
            statistic = float(result.statistic)
            return _FeatureTest(statistic, statistic, float(result.pvalue), smoothed=False)

        reference_row, window_row = self._category_table(values)
        if reference_row.size < 2:
            # One value in both samples: the distributions are equal.
            return _FeatureTest(0.0, 0.0, 1.0, smoothed=False)
        table = np.vstack([reference_row, window_row])
        smoothed = bool(np.any(table == 0))
        if smoothed:
            table = table + PSEUDO_COUNT
        # No Yates correction, so that a 2x2 table gives the plain phi coefficient.
        chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
        cramers_v = math.sqrt(chi2 / table.sum())
        return _FeatureTest(float(chi2), cramers_v, float(p_value), smoothed)

    def psi(self, values: np.ndarray) -> tuple[float, bool]:
        """Return the population stability index of the window and whether bins were smoothed."""
        if self.is_discrete:
            reference_counts, window_counts = self._category_table(values)
        else:
            reference_counts, window_counts = self.psi_counts, self._psi_bin_counts(values)
        smoothed = bool(np.any(reference_counts == 0) or np.any(window_counts == 0))
        if smoothed:
            reference_counts = reference_counts + PSEUDO_COUNT
            window_counts = window_counts + PSEUDO_COUNT
        reference_share = reference_counts / reference_counts.sum()
        window_share = window_counts / window_counts.sum()
        return float(np.sum((window_share - reference_share) * np.log(window_share / reference_share))), smoothed


class FeatureDriftTest:
    """Per-feature two-sample tests of a window against a reference, with calibrated thresholds.

    Continuous features get the two-sample Kolmogorov-Smirnov test, with the KS statistic as
    effect size. A feature whose reference values are integers with at most
    `discrete_max_values` distinct values is discrete: it gets a chi-square test of
    homogeneity on the category counts, with Cramér's V as effect size. The population
    stability index (PSI, 10 reference-quantile bins, or the categories of a discrete
    feature) is reported beside them.

    On construction, `calibration_windows` contiguous blocks of `window_size` rows are drawn
    at seeded random offsets from the reference and tested. Contiguous blocks keep the
    reference's own variation over time (seasons, a slow trend), which random rows would
    average away. Each feature's threshold is `quantile(its calibration effect sizes,
    quantile) * margin`. The thresholds are per feature because features vary by different
    amounts within the reference. On the NOAA rainfall data (reference rows 0-6000, 500-row
    windows), one threshold for the maximum over features was 0.63, set by visibility, which
    drifts slowly within the reference. That threshold missed the change in dew point after
    row 12,000 (KS statistic 0.40, against at most 0.19 within the reference). A feature drifts when its effect size exceeds its
    threshold and its corrected p-value is below `alpha`; the window drifts when any feature does.

    Parameters
    ----------
    reference
        Reference rows, shape (n_rows, n_features). NaN and infinite values are dropped per column.
    feature_names
        One unique name per column.
    min_window
        Minimum number of non-empty rows in a window, and of values in a column, to test it.
    alpha
        Significance level of the corrected p-values.
    correction
        Multiple-testing correction over the tested features: "holm" or "bonferroni".
    calibration_windows
        Number of reference windows tested to set the thresholds.
    window_size
        Rows per calibration window. Use the size of the windows that will be tested, because
        the effect sizes of small windows are larger by chance.
    quantile
        Quantile of each feature's calibration effect sizes that its threshold starts from.
    margin
        Factor (>= 1) applied to that quantile.
    discrete_max_values
        Maximum number of distinct integer values for a feature to count as discrete.
    seed
        Seed of the calibration window offsets.

    Raises
    ------
    ConfigError
        If an argument is invalid or the reference is too small; the message names it.
    """

    def __init__(
        self,
        reference: np.ndarray,
        *,
        feature_names: list[str],
        min_window: int = 30,
        alpha: float = 0.01,
        correction: Literal["bonferroni", "holm"] = "holm",
        calibration_windows: int = 50,
        window_size: int = 200,
        quantile: float = 0.99,
        margin: float = 1.5,
        discrete_max_values: int = 20,
        seed: int = 0,
    ) -> None:
        _check_int("min_window", min_window, minimum=2)
        _check_int("window_size", window_size, minimum=min_window)
        _check_int("calibration_windows", calibration_windows, minimum=10)
        _check_int("discrete_max_values", discrete_max_values, minimum=2)
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
        if correction not in _CORRECTIONS:
            raise ConfigError(f"correction must be one of {_CORRECTIONS}, got {correction!r}.")
        if not 0 < quantile <= 1:
            raise ConfigError(f"quantile must be in (0, 1], got {quantile!r}.")
        if not math.isfinite(margin) or margin < 1:
            raise ConfigError(
                f"margin must be a finite number >= 1, got {margin!r}. Below 1 the reference "
                "windows themselves would be flagged."
            )

        reference = np.asarray(reference, dtype=float)
        if reference.ndim != 2 or reference.shape[1] == 0:
            raise ConfigError(
                f"reference must be a 2-D array (rows, features) with at least one feature, "
                f"got shape {reference.shape}; reshape a single feature with reshape(-1, 1)."
            )
        names = list(feature_names)
        if len(names) != reference.shape[1]:
            raise ConfigError(
                f"feature_names has {len(names)} names but the reference has {reference.shape[1]} columns."
            )
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"feature_names must be unique, got duplicates {duplicates}.")
        if reference.shape[0] < 2 * window_size:
            raise ConfigError(
                f"reference has {reference.shape[0]} rows but calibration needs at least "
                f"2 * window_size = {2 * window_size}; pass more reference rows or a smaller window_size."
            )

        self.feature_names = names
        self.min_window = min_window
        self.alpha = alpha
        self.correction = correction
        self.window_size = window_size
        self.quantile = quantile
        self.margin = margin
        self._features: list[_FeatureReference] = []
        for name, column in zip(names, reference.T):
            finite = column[np.isfinite(column)]
            if finite.size < min_window:
                raise ConfigError(
                    f"reference feature {name!r} has {finite.size} finite values, fewer than "
                    f"min_window={min_window}; drop the feature or pass more reference rows."
                )
            self._features.append(_FeatureReference(name, finite, _is_discrete(finite, discrete_max_values)))
        self._calibrate(reference, calibration_windows, np.random.default_rng(seed))

    def _calibrate(self, reference: np.ndarray, calibration_windows: int, rng: np.random.Generator) -> None:
        """Set each feature's threshold from reference windows tested against the rest of the reference.

        Each window is left out of the reference it is compared with, as a future window
        would be. Compared with the whole reference, which contains them, windows get
        smaller effect sizes and the thresholds would be too low.
        """
        starts = rng.integers(0, reference.shape[0] - self.window_size + 1, size=calibration_windows)
        effects = np.full((calibration_windows, len(self._features)), np.nan)
        for row, start in enumerate(starts):
            inside = np.zeros(reference.shape[0], dtype=bool)
            inside[start : start + self.window_size] = True
            for column, feature in enumerate(self._features):
                window_values = reference[inside, column]
                window_values = window_values[np.isfinite(window_values)]
                if window_values.size < self.min_window:
                    continue
                rest = reference[~inside, column]
                rest_reference = _FeatureReference(feature.name, rest[np.isfinite(rest)], feature.is_discrete)
                effects[row, column] = rest_reference.test(window_values).effect_size
        self.calibration_effects = {name: effects[:, i] for i, name in enumerate(self.feature_names)}
        self.feature_thresholds = {
            name: float(np.nanquantile(values, self.quantile) * self.margin) if np.any(np.isfinite(values)) else 0.0
            for name, values in self.calibration_effects.items()
        }

    @property
    def discrete_features(self) -> list[str]:
        """Names of the features tested with chi-square."""
        return [f.name for f in self._features if f.is_discrete]

    def _columns(self, window: np.ndarray) -> list[np.ndarray]:
        return [column[np.isfinite(column)] for column in window.T]

    def _test_features(self, window: np.ndarray) -> dict[str, _FeatureTest]:
        """Test every feature that has at least min_window finite values in the window."""
        tests = {}
        for feature, values in zip(self._features, self._columns(window)):
            if values.size >= self.min_window:
                tests[feature.name] = feature.test(values)
        return tests

    def _check_window(self, window: np.ndarray) -> np.ndarray:
        window = np.asarray(window, dtype=float)
        if window.size == 0:
            raise EmptyDataError(
                f"The window is empty (shape {window.shape}); feature drift needs at least "
                f"min_window={self.min_window} rows, so collect more data before testing."
            )
        if window.ndim == 1 and len(self._features) == 1:
            window = window.reshape(-1, 1)
        if window.ndim != 2 or window.shape[1] != len(self._features):
            raise DataValidationError(
                f"The window has shape {window.shape} but the reference has {len(self._features)} "
                f"features {self.feature_names}; pass the same columns in the same order."
            )
        return window

    def _relative_effect(self, name: str, effect_size: float) -> float:
        """Return the effect size divided by the feature's threshold (infinite above a zero threshold)."""
        threshold = self.feature_thresholds[name]
        if threshold > 0:
            return effect_size / threshold
        return math.inf if effect_size > 0 else 0.0

    def _insufficient_result(self, n_rows: int, notes: list[str]) -> FeatureDriftResult:
        untested: dict[str, float | None] = {name: None for name in self.feature_names}
        return FeatureDriftResult(
            status=DriftStatus.INSUFFICIENT_DATA,
            score=None,
            threshold=None,
            score_feature=None,
            statistic=dict(untested),
            effect_size=dict(untested),
            feature_threshold=dict(self.feature_thresholds),
            p_value=dict(untested),
            p_value_adjusted=dict(untested),
            psi=dict(untested),
            test_name={f.name: f.test_name for f in self._features},
            drifted_features=(),
            top_features=(),
            n_rows=n_rows,
            notes=tuple(notes),
        )

    def _column_notes(self, window: np.ndarray, columns: list[np.ndarray]) -> list[str]:
        """Describe the columns that are empty, too short to test, or had values dropped."""
        notes = []
        for feature, values, column in zip(self._features, columns, window.T):
            dropped = column.size - values.size
            if values.size == 0:
                notes.append(f"{feature.name}: empty in this window (no finite values), not tested.")
            elif values.size < self.min_window:
                notes.append(
                    f"{feature.name}: {values.size} finite values, fewer than min_window={self.min_window}, not tested."
                )
            elif dropped:
                notes.append(f"{feature.name}: {dropped} NaN or infinite values dropped.")
        return notes

    def test(self, window: np.ndarray) -> FeatureDriftResult:
        """Test one window of rows against the reference.

        Raises
        ------
        EmptyDataError
            If the window has no rows.
        DataValidationError
            If the window does not have the reference's number of columns.
        """
        window = self._check_window(window)
        n_rows = int(np.count_nonzero(np.any(np.isfinite(window), axis=1)))
        if n_rows < self.min_window:
            reason = f"The window has {n_rows} non-empty rows, fewer than min_window={self.min_window}."
            return self._insufficient_result(n_rows, [reason])

        columns = self._columns(window)
        notes = self._column_notes(window, columns)
        tests = self._test_features(window)
        if not tests:
            return self._insufficient_result(n_rows, [*notes, "No feature has min_window finite values in this window."])

        empty: dict[str, float | None] = {name: None for name in self.feature_names}
        psi = dict(empty)
        for feature, values in zip(self._features, columns):
            if feature.name not in tests:
                continue
            psi[feature.name], psi_smoothed = feature.psi(values)
            if tests[feature.name].smoothed or psi_smoothed:
                notes.append(f"{feature.name}: empty bins smoothed with a pseudo-count of {PSEUDO_COUNT}.")

        tested = list(tests)
        adjusted = dict(zip(tested, _adjust_p_values(np.array([tests[n].p_value for n in tested]), self.correction)))
        relative = {n: self._relative_effect(n, tests[n].effect_size) for n in tested}
        ranked = sorted(tested, key=lambda n: relative[n], reverse=True)
        drifted = tuple(n for n in ranked if relative[n] > 1 and adjusted[n] < self.alpha)
        score_feature = drifted[0] if drifted else ranked[0]
        if window.shape[0] < self.window_size / 2 or window.shape[0] > self.window_size * 2:
            notes.append(
                f"The window has {window.shape[0]} rows but the thresholds were calibrated on "
                f"{self.window_size}-row windows, so the comparison is approximate."
            )

        return FeatureDriftResult(
            status=DriftStatus.DRIFT if drifted else DriftStatus.STABLE,
            score=tests[score_feature].effect_size,
            threshold=self.feature_thresholds[score_feature],
            score_feature=score_feature,
            statistic=dict(empty) | {n: t.statistic for n, t in tests.items()},
            effect_size=dict(empty) | {n: t.effect_size for n, t in tests.items()},
            feature_threshold=dict(self.feature_thresholds),
            p_value=dict(empty) | {n: t.p_value for n, t in tests.items()},
            p_value_adjusted=dict(empty) | {n: float(p) for n, p in adjusted.items()},
            psi=psi,
            test_name={f.name: f.test_name for f in self._features},
            drifted_features=drifted,
            top_features=tuple(ranked[:TOP_FEATURES]),
            n_rows=n_rows,
            notes=tuple(notes),
        )


class DriftMonitor(DriftDetector):
    """Persistence over windows: an alarm after `persistence` consecutive drifting windows.

    A window with insufficient data neither counts nor breaks the run; a stable window
    breaks it. `test` is any window test, such as `FeatureDriftTest` or `MMDDriftTest`.
    """

    def __init__(self, test: WindowTest, persistence: int = 2) -> None:
        super().__init__()
        _check_int("persistence", persistence, minimum=1)
        self.test = test
        self.persistence = persistence
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.consecutive_drift_windows = 0
        self.last_result: WindowResult | None = None

    def update(self, x: np.ndarray) -> None:
        """Test one window and update the run of drifting windows."""
        result = self.test.test(x)
        self.last_result = result
        if result.status is DriftStatus.DRIFT:
            self.consecutive_drift_windows += 1
        elif result.status is DriftStatus.STABLE:
            self.consecutive_drift_windows = 0
        self._drift_detected = self.consecutive_drift_windows >= self.persistence


def _adjust_p_values(p_values: np.ndarray, correction: str) -> np.ndarray:
    """Adjust p-values for multiple testing (Bonferroni, or Holm's step-down)."""
    m = p_values.size
    if correction == "bonferroni":
        return np.minimum(p_values * m, 1.0)
    order = np.argsort(p_values, kind="stable")
    stepped = np.minimum(p_values[order] * (m - np.arange(m)), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def _is_discrete(values: np.ndarray, max_values: int) -> bool:
    """Return whether the values are integers with at most max_values distinct values."""
    distinct = np.unique(values)
    return distinct.size <= max_values and bool(np.all(distinct == np.round(distinct)))


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _json_floats(values: dict[str, float | None]) -> dict[str, float | None]:
    return {name: _json_float(value) for name, value in values.items()}


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
