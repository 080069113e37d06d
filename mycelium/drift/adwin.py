"""ADWIN: adaptive windowing for a change in the mean of a stream (Bifet and Gavaldà, 2007)."""

from __future__ import annotations

import math

from mycelium.drift.base import DriftDetector
from mycelium.errors import ConfigError


class ADWIN(DriftDetector):
    """ADWIN2: a window that drops its oldest part whenever the mean of that part differs.

    The window W is stored as an exponential histogram: buckets of 1, 2, 4, ... values, each
    with its count, sum and sum of squared deviations, and at most ``max_buckets`` buckets of
    each size. When a size gets one bucket too many, its two oldest buckets are merged into
    one of twice the size. So W of n values takes O(max_buckets * log n) memory, and its
    possible cuts are the bucket boundaries.

    Every ``clock`` values, once W has more than ``grace_period`` values, each boundary splits
    W into an older part W0 (n0 values) and a newer part W1 (n1 values). A change is detected
    when ``|mean(W0) - mean(W1)| > epsilon_cut`` for a cut where both parts have at least
    ``min_window_length`` values, with the bound of Bifet and Gavaldà (2007), section 3:

        epsilon_cut = sqrt(2 / m * var(W) * ln(2 / delta')) + 2 / (3 m) * ln(2 / delta'),
        m = 1 / (1 / n0 + 1 / n1),   delta' = delta / ln(n).

    The oldest bucket is then dropped and the cuts are checked again, until no cut differs.
    The update that drops buckets sets `drift_detected`. Unlike `PageHinkley`, the detector
    then goes on with the shrunken window, which contains the values since the change.

    river's ``drift.ADWIN`` (river 0.26.1) uses the same histogram and schedule with the same
    defaults, but computes m from ``n0 - min_window_length + 1`` and ``n1 - min_window_length + 1``
    and empties its window after each alarm. Its first alarm on a stream is therefore at the
    same check or a later one.

    Parameters
    ----------
    delta
        Confidence parameter in (0, 1): the bound on the probability of a false alarm per check.
    clock
        Check the cuts every `clock` values. 1 checks after every value.
    max_buckets
        Buckets kept of each size before the two oldest are merged (M in the paper).
    min_window_length
        Minimum number of values on each side of a cut.
    grace_period
        Number of values in the window before the first check.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(1000) < 0.1, rng.random(1000) < 0.5])
    >>> detector = ADWIN()
    >>> for i, error in enumerate(errors):
    ...     detector.update(float(error))
    ...     if detector.drift_detected:
    ...         break
    >>> i, detector.width
    (1023, 512)
    """

    def __init__(
        self,
        *,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        super().__init__()
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}.")
        for name, value, minimum in [("clock", clock, 1), ("max_buckets", max_buckets, 2),
                                     ("min_window_length", min_window_length, 1), ("grace_period", grace_period, 0)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self.reset()

    def reset(self) -> None:
        super().reset()
        # _rows[i] contains the buckets of 2**i values, oldest first, as [sum, sum of squared deviations].
        self._rows: list[list[list[float]]] = [[]]
        self._width = 0
        self._total = 0.0
        self._m2 = 0.0
        self._n_seen = 0
        self.n_detections = 0

    @property
    def width(self) -> int:
        """Number of values in the current window."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window (0.0 when it is empty)."""
        return self._total / self._width if self._width else 0.0

    @property
    def variance(self) -> float:
        """Population variance of the current window (0.0 when it is empty)."""
        return self._m2 / self._width if self._width else 0.0

    def update(self, x: float) -> None:
        """Add one value (an error, a loss) and check the cuts every ``clock`` updates.

        Raises
        ------
        ValueError
            If x is NaN or infinite.
        """
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"ADWIN.update got the non-finite value {x!r}; drop it before updating.")
        self._drift_detected = False
        self._insert(x)
        self._n_seen += 1
        if self._n_seen % self.clock == 0 and self._width > self.grace_period:
            while self._width > 0 and self._find_cut():
                self._drop_oldest()
                self._drift_detected = True
        if self._drift_detected:
            self.n_detections += 1

    def _insert(self, x: float) -> None:
        if self._width:
            deviation = x - self._total / self._width
            self._m2 += deviation * deviation * self._width / (self._width + 1)
        self._width += 1
        self._total += x
        self._rows[0].append([x, 0.0])

        size = 1
        for level, row in enumerate(self._rows):
            if len(row) <= self.max_buckets:
                break
            # Merge the two oldest buckets of this size into one bucket of twice the size.
            (sum_a, m2_a), (sum_b, m2_b) = row.pop(0), row.pop(0)
            difference = sum_a / size - sum_b / size
            merged = [sum_a + sum_b, m2_a + m2_b + difference * difference * size / 2]
            if level + 1 == len(self._rows):
                self._rows.append([])
            self._rows[level + 1].append(merged)
            size *= 2

    def _find_cut(self) -> bool:
        """Return whether the means of the two parts differ at some bucket boundary."""
        n_old, sum_old = 0, 0.0
        remaining = self._width
        # Boundaries run from the oldest bucket to the newest. The boundary after the newest
        # bucket would leave W1 empty, so it is not a cut.
        for level in range(len(self._rows) - 1, -1, -1):
            size = 1 << level
            for bucket_sum, _ in self._rows[level]:
                n_old += size
                sum_old += bucket_sum
                remaining -= size
                if remaining == 0:
                    return False
                if n_old < self.min_window_length or remaining < self.min_window_length:
                    continue
                difference = sum_old / n_old - (self._total - sum_old) / remaining
                if abs(difference) > self._epsilon_cut(n_old, remaining):
                    return True
        return False

    def _epsilon_cut(self, n_old: int, n_new: int) -> float:
        m_inverse = 1.0 / n_old + 1.0 / n_new
        log_term = math.log(2.0 * math.log(self._width) / self.delta)
        return math.sqrt(2.0 * m_inverse * self.variance * log_term) + 2.0 / 3.0 * m_inverse * log_term

    def _drop_oldest(self) -> None:
        level = len(self._rows) - 1
        size = 1 << level
        bucket_sum, bucket_m2 = self._rows[level].pop(0)
        remaining = self._width - size
        if remaining:
            difference = bucket_sum / size - (self._total - bucket_sum) / remaining
            self._m2 -= bucket_m2 + difference * difference * size * remaining / self._width
        else:
            self._m2 = 0.0
        self._m2 = max(self._m2, 0.0)
        self._width = remaining
        self._total -= bucket_sum
        if not self._rows[level] and level > 0:
            self._rows.pop()
