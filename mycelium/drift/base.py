"""The contract that every drift detector follows, and the status of one tested window."""

from __future__ import annotations

import abc
import enum
from typing import Any, Protocol


class DriftStatus(str, enum.Enum):
    """Outcome of one window tested against a reference."""

    INSUFFICIENT_DATA = "insufficient_data"
    STABLE = "stable"
    DRIFT = "drift"


class DriftDetector(abc.ABC):
    """A detector fed one observation at a time.

    An observation is whatever the detector consumes: one error or loss for a streaming
    detector, one window of rows for a window monitor. After each `update`, `drift_detected`
    is true if that update raised an alarm. Detectors do not log; the caller decides what
    an alarm means.
    """

    def __init__(self) -> None:
        self._drift_detected = False

    @abc.abstractmethod
    def update(self, x: Any) -> None:
        """Update the detector's statistics with one observation and decide."""

    @property
    def drift_detected(self) -> bool:
        """Whether the last `update` detected drift."""
        return self._drift_detected

    def reset(self) -> None:
        """Forget every observation and clear the alarm."""
        self._drift_detected = False


class WindowResult(Protocol):
    """The outcome of one tested window, as a window monitor reads it."""

    @property
    def status(self) -> DriftStatus: ...


class WindowTest(Protocol):
    """A two-sample test of a window against a reference, such as `FeatureDriftTest` or `MMDDriftTest`."""

    def test(self, window: Any) -> WindowResult: ...
