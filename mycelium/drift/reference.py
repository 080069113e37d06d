"""Feature drift of a domain against every reference its subgraph was trained on."""

from __future__ import annotations

import pandas as pd

from mycelium.config import Drift
from mycelium.drift.base import DriftStatus
from mycelium.drift.feature_drift import FeatureDriftResult, FeatureDriftTest


class ReferenceMonitor:
    """Collects rows into windows of ``window_size`` and tests each window against every reference.

    A domain with patches has one reference per chain depth (the expert's training data, then
    each patch's). A window drifts only if it differs from all of them, since data like any one
    reference is already served by that depth. ``drift_detected`` turns true after
    ``persistence`` drifting windows in a row; an insufficient window neither counts nor resets.
    """

    def __init__(self, references: list[pd.DataFrame], settings: Drift, *, seed: int = 0):
        self.settings = settings
        self.columns = list(references[0].columns)
        self.tests = []
        for reference in references:
            window = min(settings.window_size, len(reference) // 2)
            self.tests.append(
                FeatureDriftTest(
                    reference[self.columns].to_numpy(dtype=float),
                    feature_names=self.columns,
                    min_window=min(settings.min_window, window),
                    alpha=settings.alpha,
                    window_size=window,
                    quantile=settings.quantile,
                    margin=settings.margin,
                    seed=seed,
                )
            )
        self._pending: list[pd.DataFrame] = []
        self.consecutive = 0
        self.last_result: FeatureDriftResult | None = None

    @property
    def in_drift(self) -> bool:
        """True when the last tested window drifted from every reference."""
        return self.last_result is not None and self.last_result.status is DriftStatus.DRIFT

    @property
    def drift_detected(self) -> bool:
        return self.consecutive >= self.settings.persistence

    def update(self, rows: pd.DataFrame) -> FeatureDriftResult | None:
        """Add rows; when a full window is collected, test it and return the result, else None."""
        self._pending.append(rows[self.columns])
        if sum(len(p) for p in self._pending) < self.settings.window_size:
            return None
        window = pd.concat(self._pending, ignore_index=True).to_numpy(dtype=float)
        self._pending = []
        results = [test.test(window) for test in self.tests]
        drifted = [r for r in results if r.status is DriftStatus.DRIFT]
        if len(drifted) == len(results):
            # The reference it is closest to, by effect relative to threshold, explains the drift best.
            result = min(results, key=lambda r: (r.score or 0.0) / (r.threshold or 1.0))
            self.consecutive += 1
        else:
            result = next(r for r in results if r.status is not DriftStatus.DRIFT)
            if result.status is DriftStatus.STABLE:
                self.consecutive = 0
        self.last_result = result
        return result
