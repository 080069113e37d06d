"""Page-Hinkley test for a change in the mean of a stream of errors or losses."""

from __future__ import annotations

import math
from typing import Literal

from mycelium.drift.base import DriftDetector
from mycelium.errors import ConfigError

_MODES = ("up", "down", "both")


class PageHinkley(DriftDetector):
    """Page-Hinkley test on the mean of a stream, with a forgetting factor.

    Each value x_t updates the running mean m_t and two cumulative sums of deviations,
    U_t = alpha * U_{t-1} + (x_t - m_t) / s_t - delta for increases and
    D_t = alpha * D_{t-1} + (x_t - m_t) / s_t + delta for decreases. An increase is detected
    when U_t - min(U) > threshold, a decrease when max(D) - D_t > threshold. Fed per-sample
    errors (0/1) or losses, mode "up" detects a model getting worse.

    With ``standardize=False`` the scale s_t is 1, so delta and threshold are in the units of
    the stream, as in river's ``drift.PageHinkley``. With ``standardize=True`` s_t is the
    running standard deviation of the values since the last reset, at least ``min_std``, so
    delta and threshold count standard deviations. Then one setting suits error streams
    whose error rates differ: a shift from 2% to 50% errors is about 3.5 standard
    deviations, and a shift from 20% to 40% about 0.5.

    A forgetting factor below 1 pulls U back towards 0 while min(U) stays, so on a long
    stable stream the distance U_t - min(U) grows until it crosses the threshold. On the
    stationary error streams of benchmarks/detection.py (20,000 values each at 2%, 10% and 30%
    errors) every swept setting with alpha 0.9999 raised false alarms, and the params.yaml
    setting, with alpha 1, raised none.

    `drift_detected` is true only after the update that raised the alarm. The next update
    starts a fresh test, as if `reset` had been called.

    Parameters
    ----------
    min_instances
        Number of values seen before any alarm can be raised.
    delta
        Magnitude of change that is tolerated, in the units of the stream (in standard
        deviations with ``standardize``).
    threshold
        Alarm threshold (lambda) on the cumulative deviation, in the same units as delta.
    alpha
        Forgetting factor of the cumulative sums, in (0, 1]. 1 means no forgetting.
    mode
        "up" detects increases of the mean, "down" decreases, "both" either.
    standardize
        Divide each deviation by the running standard deviation, so that delta and threshold
        are in standard deviations.
    min_std
        Lower bound of that standard deviation, in the units of the stream. After n equal
        values a different one lies about sqrt(n) running standard deviations away, so
        without the bound one error after a long error-free run could cross the threshold.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(500) < 0.1, rng.random(500) < 0.6])
    >>> detector = PageHinkley(threshold=20.0)
    >>> for i, error in enumerate(errors):
    ...     detector.update(float(error))
    ...     if detector.drift_detected:
    ...         break
    >>> i
    537

    With rare errors, 2% before the change at index 2,000 and 30% after, the standardized test
    with the settings of params.yaml alarms 32 values after the change, and the defaults 199:

    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(2000) < 0.02, rng.random(1000) < 0.3])
    >>> def first_alarm(detector):
    ...     for i, error in enumerate(errors):
    ...         detector.update(float(error))
    ...         if detector.drift_detected:
    ...             return i
    >>> first_alarm(PageHinkley()), first_alarm(PageHinkley(delta=0.1, threshold=60.0, alpha=1.0, standardize=True))
    (2199, 2032)
    """

    def __init__(
        self,
        *,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: Literal["up", "down", "both"] = "up",
        standardize: bool = False,
        min_std: float = 0.05,
    ) -> None:
        super().__init__()
        if isinstance(min_instances, bool) or not isinstance(min_instances, int) or min_instances < 1:
            raise ConfigError(f"min_instances must be an integer >= 1, got {min_instances!r}.")
        if not math.isfinite(delta) or delta < 0:
            raise ConfigError(f"delta must be a finite number >= 0, got {delta!r}.")
        if not math.isfinite(threshold) or threshold <= 0:
            raise ConfigError(f"threshold must be a finite number > 0, got {threshold!r}.")
        if not 0 < alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {alpha!r}; use 1 for no forgetting.")
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}.")
        if not isinstance(standardize, bool):
            raise ConfigError(f"standardize must be True or False, got {standardize!r}.")
        if not math.isfinite(min_std) or min_std <= 0:
            raise ConfigError(f"min_std must be a finite number > 0, got {min_std!r}.")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self.standardize = standardize
        self.min_std = min_std
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._n = 0
        self._mean = 0.0
        self._sum_squares = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -math.inf

    @property
    def n(self) -> int:
        """Number of values seen since the last reset."""
        return self._n

    @property
    def std(self) -> float:
        """Population standard deviation of the values since the last reset (0.0 before any value)."""
        return math.sqrt(self._sum_squares / self._n) if self._n else 0.0

    @property
    def statistic(self) -> float:
        """Current test statistic of the monitored direction(s), compared with `threshold`."""
        if self._n == 0:
            return 0.0
        increase = self._sum_increase - self._min_increase
        decrease = self._max_decrease - self._sum_decrease
        if self.mode == "up":
            return increase
        if self.mode == "down":
            return decrease
        return max(increase, decrease)

    def update(self, x: float) -> None:
        """Add one value (an error, a loss) to the test.

        Raises
        ------
        ValueError
            If x is NaN or infinite.
        """
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"PageHinkley.update got the non-finite value {x!r}; drop it before updating.")
        if self._drift_detected:
            self.reset()

        self._n += 1
        previous_mean = self._mean
        self._mean += (x - previous_mean) / self._n
        # Welford's update of the sum of squared deviations.
        self._sum_squares += (x - previous_mean) * (x - self._mean)
        deviation = x - self._mean
        if self.standardize:
            deviation /= max(self.std, self.min_std)
        self._sum_increase = self.alpha * self._sum_increase + deviation - self.delta
        self._sum_decrease = self.alpha * self._sum_decrease + deviation + self.delta
        self._min_increase = min(self._min_increase, self._sum_increase)
        self._max_decrease = max(self._max_decrease, self._sum_decrease)

        if self._n >= self.min_instances:
            self._drift_detected = self.statistic > self.threshold
