"""Performance drift on labelled feedback: ADWIN and Page-Hinkley on one error stream."""

from __future__ import annotations

from mycelium.drift.adwin import ADWIN
from mycelium.drift.base import DriftDetector
from mycelium.drift.page_hinkley import PageHinkley


class PerformanceMonitor(DriftDetector):
    """Feed each error to ADWIN and to Page-Hinkley, and raise an alarm when either one does.

    The two tests fail in different ways. ADWIN compares two parts of its window and reacts
    to any lasting change of the mean. Page-Hinkley accumulates deviations from the running
    mean and reacts sooner to a large jump in a stream with few errors. Either alarm counts,
    so the monitor alarms no later than the faster test, and its false alarms are those of
    both tests together.

    Parameters
    ----------
    adwin, page_hinkley
        The two detectors, already configured. Each keeps its own reset rule: Page-Hinkley
        restarts after its alarm, ADWIN keeps the part of its window after the change.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(2000) < 0.02, rng.random(1000) < 0.3])
    >>> monitor = PerformanceMonitor(ADWIN(), PageHinkley(delta=0.1, threshold=60.0, alpha=1.0, standardize=True))
    >>> for i, error in enumerate(errors):
    ...     monitor.update(float(error))
    ...     if monitor.drift_detected:
    ...         break
    >>> i, monitor.detected_by
    (2032, ('page_hinkley',))
    """

    def __init__(self, adwin: ADWIN, page_hinkley: PageHinkley) -> None:
        super().__init__()
        self.adwin = adwin
        self.page_hinkley = page_hinkley
        self.detected_by: tuple[str, ...] = ()

    def reset(self) -> None:
        super().reset()
        self.detected_by = ()
        self.adwin.reset()
        self.page_hinkley.reset()

    def update(self, x: float) -> None:
        """Add one error (or loss) to both tests.

        Raises
        ------
        ValueError
            If x is NaN or infinite.
        """
        self.adwin.update(x)
        self.page_hinkley.update(x)
        self.detected_by = tuple(
            name for name, detector in (("adwin", self.adwin), ("page_hinkley", self.page_hinkley))
            if detector.drift_detected
        )
        self._drift_detected = bool(self.detected_by)
