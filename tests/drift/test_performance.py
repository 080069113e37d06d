import math

import numpy as np
import pytest

from mycelium.drift import ADWIN, PageHinkley, PerformanceMonitor

STANDARDIZED = {"delta": 0.1, "threshold": 60.0, "alpha": 1.0, "standardize": True}


def errors(seed: int, before: float, after: float, change: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(change) < before, rng.random(change) < after]).astype(float)


def alarm_indices(detector, stream) -> list[int]:
    alarms = []
    for i, x in enumerate(stream):
        detector.update(float(x))
        if detector.drift_detected:
            alarms.append(i)
    return alarms


def monitor() -> PerformanceMonitor:
    return PerformanceMonitor(ADWIN(), PageHinkley(**STANDARDIZED))


def test_known_answer_alarms_are_union():
    # Seed 0, Bernoulli(0.1) then Bernoulli(0.5): Page-Hinkley alarms at 1039, ADWIN at 1055 and 1119.
    stream = errors(0, 0.1, 0.5)
    assert alarm_indices(ADWIN(), stream) == [1055, 1119]
    assert alarm_indices(PageHinkley(**STANDARDIZED), stream) == [1039]
    assert alarm_indices(monitor(), stream) == [1039, 1055, 1119]


def test_detected_by_names_the_tests():
    stream = errors(0, 0.1, 0.5)
    detector = monitor()
    names = []
    for x in stream:
        detector.update(float(x))
        if detector.drift_detected:
            names.append(detector.detected_by)
    assert names == [("page_hinkley",), ("adwin",), ("adwin",)]


def test_stable_stream_raises_no_alarm():
    stream = np.random.default_rng(1).random(20000) < 0.1
    assert alarm_indices(monitor(), stream) == []


def test_reset_clears_both_tests():
    detector = monitor()
    for x in errors(0, 0.1, 0.5)[:1040]:
        detector.update(float(x))
    detector.reset()
    assert not detector.drift_detected
    assert detector.detected_by == ()
    assert detector.adwin.width == 0
    assert detector.page_hinkley.n == 0


def test_non_finite_value_raises():
    with pytest.raises(ValueError, match="non-finite"):
        monitor().update(math.nan)
