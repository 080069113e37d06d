"""Windows at the edges of the feature-drift test: ties, empty bins, copies of the reference."""

import numpy as np
import pytest

from mycelium.drift import DriftStatus, FeatureDriftTest, PageHinkley

NAMES = ["a", "b"]


@pytest.fixture(scope="module")
def continuous_test() -> FeatureDriftTest:
    reference = np.random.default_rng(0).normal(size=(1000, 2))
    return FeatureDriftTest(reference, feature_names=NAMES, window_size=200)


def test_window_of_one_value_drifts(continuous_test):
    # Every value of column a is tied, and all PSI bins but one are empty.
    window = np.random.default_rng(1).normal(size=(200, 2))
    window[:, 0] = 0.0
    result = continuous_test.test(window)
    assert result.drifted_features == ("a",)
    assert "a: empty bins smoothed with a pseudo-count of 0.5." in result.notes
    assert np.isfinite(result.psi["a"])
    assert result.effect_size["a"] == pytest.approx(0.5, abs=0.05)


def test_copy_of_reference_rows_is_stable(continuous_test):
    reference = np.random.default_rng(0).normal(size=(1000, 2))
    result = continuous_test.test(reference[300:500])
    assert result.status is DriftStatus.STABLE


def test_window_inside_one_bin_is_smoothed():
    # The reference's quantile bins of column a have edges near 1..9, and the window sits in one bin.
    rng = np.random.default_rng(2)
    reference = np.column_stack([rng.permutation(np.linspace(0.0, 10.0, 1000)), rng.normal(size=1000)])
    drift_test = FeatureDriftTest(reference, feature_names=NAMES, window_size=200)
    window = np.column_stack([np.random.default_rng(3).uniform(4.1, 4.9, 200), np.random.default_rng(4).normal(size=200)])
    result = drift_test.test(window)
    assert "a: empty bins smoothed with a pseudo-count of 0.5." in result.notes
    assert result.psi["a"] > 1.0
    assert result.status is DriftStatus.DRIFT


def test_single_column_window_accepts_1d_array():
    reference = np.random.default_rng(5).normal(size=(600, 1))
    drift_test = FeatureDriftTest(reference, feature_names=["only"], window_size=200)
    result = drift_test.test(np.random.default_rng(6).normal(size=200))
    assert result.status is DriftStatus.STABLE


def test_constant_error_stream_never_alarms():
    detector = PageHinkley(min_instances=1)
    for _ in range(5000):
        detector.update(1.0)
        assert not detector.drift_detected
