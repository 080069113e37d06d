import math

import numpy as np
import pytest
from river import drift as river_drift

from mycelium.drift import ADWIN
from mycelium.errors import ConfigError


def bernoulli_stream(seed: int, before: float = 0.1, after: float = 0.5, change: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(change) < before, rng.random(change) < after]).astype(float)


def gaussian_stream(seed: int, shift: float = 0.5, change: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 1.0, change), rng.normal(shift, 1.0, change)])


def alarm_indices(detector, stream) -> list[int]:
    alarms = []
    for i, x in enumerate(stream):
        detector.update(float(x))
        if detector.drift_detected:
            alarms.append(i)
    return alarms


class TestKnownAnswers:
    def test_error_rate_increase(self):
        # Bernoulli(0.1) errors for 1,000 samples, then Bernoulli(0.5), seed 0. The window
        # keeps shrinking after the first alarm, which raises a second one.
        assert alarm_indices(ADWIN(), bernoulli_stream(0)) == [1055, 1119]

    def test_mean_shift_of_gaussian(self):
        assert alarm_indices(ADWIN(), gaussian_stream(0)) == [2111, 2175]

    def test_clock_one_alarms_sooner(self):
        # Checking after every value finds the change 38 values before the 32-value clock does.
        assert alarm_indices(ADWIN(clock=1), bernoulli_stream(0))[0] == 1017


class TestAgainstRiver:
    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("make_stream", [bernoulli_stream, gaussian_stream], ids=["bernoulli", "gaussian"])
    def test_first_alarm_matches_river(self, seed, make_stream):
        stream = make_stream(seed)
        ours = alarm_indices(ADWIN(), stream)
        # river 0.26.1 ADWIN with the same defaults. Its cut bound is slightly larger (see the
        # class docstring), so our first alarm is at the same check or an earlier one.
        theirs = alarm_indices(river_drift.ADWIN(), stream)
        assert ours and theirs
        assert ours[0] <= theirs[0]
        assert theirs[0] - ours[0] <= 32
        assert ours[0] >= len(stream) // 2

    @pytest.mark.parametrize("seed", range(3))
    def test_stationary_stream_raises_no_alarm(self, seed):
        stream = np.random.default_rng(seed).random(20_000) < 0.2
        assert alarm_indices(ADWIN(), stream) == []
        assert alarm_indices(river_drift.ADWIN(), stream) == []

    def test_window_statistics_match_river(self):
        stream = np.random.default_rng(4).normal(size=3000)
        ours, theirs = ADWIN(), river_drift.ADWIN()
        for x in stream:
            ours.update(float(x))
            theirs.update(float(x))
        assert ours.width == theirs.width == 3000
        assert ours.estimation == pytest.approx(theirs.estimation, rel=1e-12)
        assert ours.variance * ours.width == pytest.approx(theirs.variance, rel=1e-9)


class TestWindow:
    def test_statistics_are_exact_without_change(self):
        stream = np.random.default_rng(1).normal(3.0, 2.0, size=5000)
        detector = ADWIN()
        for x in stream:
            detector.update(float(x))
        assert detector.n_detections == 0
        assert detector.width == 5000
        assert detector.estimation == pytest.approx(stream.mean(), rel=1e-12)
        assert detector.variance == pytest.approx(stream.var(), rel=1e-9)

    def test_buckets_grow_logarithmically(self):
        detector = ADWIN(max_buckets=5)
        for x in np.random.default_rng(2).random(10_000):
            detector.update(float(x))
        n_buckets = sum(len(row) for row in detector._rows)
        assert n_buckets <= 5 * (math.log2(10_000) + 1)
        assert all(len(row) <= 5 for row in detector._rows)

    def test_window_shrinks_to_new_regime(self):
        # 3,000 values at mean 0.1, then 3,000 at mean 0.6: the window ends up holding the
        # values since the change, plus at most part of one old bucket.
        detector = ADWIN()
        for x in bernoulli_stream(3, before=0.1, after=0.6, change=3000):
            detector.update(float(x))
        assert detector.n_detections >= 1
        assert 3000 <= detector.width < 3200
        assert detector.estimation == pytest.approx(0.6, abs=0.03)

    def test_constant_stream_never_alarms(self):
        detector = ADWIN(clock=1)
        alarms = alarm_indices(detector, [0.5] * 2000)
        assert alarms == []
        assert detector.variance == 0.0

    def test_step_in_constant_stream_alarms(self):
        alarms = alarm_indices(ADWIN(clock=1), [0.0] * 500 + [1.0] * 50)
        assert alarms
        assert 500 <= alarms[0] < 520


class TestState:
    def test_alarm_lasts_one_update(self):
        stream = bernoulli_stream(0)
        detector = ADWIN()
        for x in stream[:1056]:
            detector.update(float(x))
        assert detector.drift_detected
        detector.update(float(stream[1056]))
        assert not detector.drift_detected

    def test_reset_clears_state(self):
        detector = ADWIN()
        for x in bernoulli_stream(0):
            detector.update(float(x))
        detector.reset()
        assert not detector.drift_detected
        assert detector.width == 0
        assert detector.estimation == 0.0
        assert detector.n_detections == 0

    def test_non_finite_value_raises(self):
        with pytest.raises(ValueError, match="non-finite"):
            ADWIN().update(math.inf)

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"delta": 0.0}, "delta"),
            ({"delta": 1.0}, "delta"),
            ({"clock": 0}, "clock"),
            ({"clock": 2.5}, "clock"),
            ({"max_buckets": 1}, "max_buckets"),
            ({"min_window_length": 0}, "min_window_length"),
            ({"grace_period": -1}, "grace_period"),
        ],
    )
    def test_invalid_argument_names_parameter(self, kwargs, name):
        with pytest.raises(ConfigError, match=name):
            ADWIN(**kwargs)
