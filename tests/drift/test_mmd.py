import json

import numpy as np
import pytest
import torch

from mycelium.drift import DriftMonitor, DriftStatus, MMDDriftTest
from mycelium.drift.mmd import _median_heuristic, _mmd2_from_kernel, _rbf_kernel
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError

DIMS = 4


@pytest.fixture(scope="module")
def mmd_test() -> MMDDriftTest:
    reference = np.random.default_rng(0).normal(size=(1000, DIMS))
    return MMDDriftTest(reference, window_size=100, n_permutations=100, max_reference=300, seed=1)


def window(seed: int, shift: float = 0.0, rows: int = 100) -> np.ndarray:
    values = np.random.default_rng(seed).normal(size=(rows, DIMS))
    values[:, 0] += shift
    return values


def naive_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


class TestStatistic:
    def test_unbiased_mmd2_matches_definition(self):
        rng = np.random.default_rng(2)
        x, y = rng.normal(size=(25, 3)), rng.normal(size=(15, 3)) + 0.4
        pooled = np.vstack([x, y])
        fast = _mmd2_from_kernel(_rbf_kernel(pooled, pooled, 1.3), 25)
        assert fast == pytest.approx(naive_mmd2(x, y, 1.3), rel=1e-10)

    def test_same_distribution_can_be_negative(self):
        # The unbiased estimate is centred on 0 when both samples share a distribution.
        rng = np.random.default_rng(3)
        x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
        assert naive_mmd2(x, y, 1.0) < 0

    def test_median_heuristic_ignores_duplicates(self):
        rows = np.array([[0.0], [0.0], [1.0], [3.0]])
        # Non-zero distances: 1, 1, 3, 3, 2, so the median is 2.
        assert _median_heuristic(rows) == 2.0

    def test_bandwidth_of_constant_reference_is_one(self):
        assert _median_heuristic(np.ones((10, 3))) == 1.0


class TestKnownAnswers:
    def test_window_sequence(self, mmd_test):
        # Five windows like the reference, then five with feature 0 shifted by 1.0.
        windows = [window(10 + i) for i in range(5)] + [window(20 + i, shift=1.0) for i in range(5)]
        statuses = [mmd_test.test(w).status for w in windows]
        assert statuses == [DriftStatus.STABLE] * 5 + [DriftStatus.DRIFT] * 5

    def test_persistent_alarm_index(self, mmd_test):
        monitor = DriftMonitor(mmd_test, persistence=3)
        alarms = []
        for index, w in enumerate([window(30 + i) for i in range(4)] + [window(40 + i, shift=1.0) for i in range(4)]):
            monitor.update(w)
            if monitor.drift_detected:
                alarms.append(index)
        assert alarms == [6, 7]

    def test_calibrated_values(self, mmd_test):
        result = mmd_test.test(window(50, shift=1.0))
        assert result.bandwidth == pytest.approx(2.6083, abs=1e-4)
        assert result.threshold == pytest.approx(0.1103, abs=1e-4)
        assert result.effect_size == pytest.approx(0.2695, abs=1e-4)
        assert result.p_value == pytest.approx(1 / 101)


class TestDecision:
    def test_threshold_comes_from_calibration(self, mmd_test):
        assert mmd_test.calibration_effects.shape == (50,)
        assert mmd_test.threshold == pytest.approx(np.quantile(mmd_test.calibration_effects, 0.99) * 1.5)

    def test_p_value_does_not_depend_on_order(self, mmd_test):
        first = mmd_test.test(window(60)).p_value
        mmd_test.test(window(61, shift=2.0))
        assert mmd_test.test(window(60)).p_value == first

    def test_large_effect_without_significance_is_stable(self):
        # 19 permutations cannot give a p-value below 1 / 20 = 0.05, so alpha=0.05 is never reached.
        reference = np.random.default_rng(0).normal(size=(1000, DIMS))
        strict = MMDDriftTest(reference, window_size=100, n_permutations=19, alpha=0.05, max_reference=200)
        result = strict.test(window(70, shift=2.0))
        assert result.effect_size > result.threshold
        assert result.p_value == pytest.approx(0.05)
        assert result.status is DriftStatus.STABLE

    def test_torch_window_gives_same_result(self, mmd_test):
        values = window(80, shift=0.5)
        assert mmd_test.test(torch.from_numpy(values)).statistic == mmd_test.test(values).statistic

    def test_result_is_json_serialisable(self, mmd_test):
        decoded = json.loads(json.dumps(mmd_test.test(window(90, shift=1.0)).to_dict(), allow_nan=False))
        assert decoded["status"] == "drift"
        assert decoded["test_name"] == "mmd"
        assert decoded["score"] == decoded["effect_size"]
        assert decoded["n_reference"] == 300


class TestDegenerateWindows:
    def test_eight_rows_is_insufficient(self, mmd_test):
        result = mmd_test.test(window(1, shift=5.0, rows=8))
        assert result.status is DriftStatus.INSUFFICIENT_DATA
        assert result.effect_size is None
        assert result.n_rows == 8
        assert "8 finite rows" in result.notes[-1]

    def test_nan_rows_are_dropped(self, mmd_test):
        values = window(2)
        values[:10, 1] = np.nan
        values[10, 0] = np.inf
        result = mmd_test.test(values)
        assert result.n_rows == 89
        assert "11 rows with NaN or infinite values dropped." in result.notes
        assert result.status is DriftStatus.STABLE

    def test_all_nan_window_is_insufficient(self, mmd_test):
        result = mmd_test.test(np.full((100, DIMS), np.nan))
        assert result.status is DriftStatus.INSUFFICIENT_DATA
        assert result.n_rows == 0

    def test_empty_window_raises(self, mmd_test):
        with pytest.raises(EmptyDataError, match="empty"):
            mmd_test.test(np.empty((0, DIMS)))

    def test_wrong_width_raises(self, mmd_test):
        with pytest.raises(DataValidationError, match="4"):
            mmd_test.test(np.zeros((100, 3)))

    def test_constant_embeddings_in_both_are_stable(self):
        constant = MMDDriftTest(np.ones((400, 3)), window_size=100, n_permutations=100)
        result = constant.test(np.ones((100, 3)))
        assert constant.bandwidth == 1.0
        assert result.statistic == pytest.approx(0.0, abs=1e-12)
        assert result.p_value == 1.0
        assert result.status is DriftStatus.STABLE

    def test_other_constant_drifts_from_constant_reference(self):
        constant = MMDDriftTest(np.ones((400, 3)), window_size=100, n_permutations=100)
        result = constant.test(np.full((100, 3), 2.0))
        assert constant.threshold == 0.0
        assert result.effect_size > 0
        assert result.status is DriftStatus.DRIFT

    def test_tied_rows_are_tested(self, mmd_test):
        # Eight distinct rows repeated: many zero distances, still a defined result.
        values = np.repeat(window(3, rows=8), 13, axis=0)
        result = mmd_test.test(values)
        assert result.n_rows == 104
        assert np.isfinite(result.effect_size)


class TestConfig:
    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"min_window": 1}, "min_window"),
            ({"window_size": 10}, "window_size"),
            ({"window_size": 600}, "window_size"),
            ({"calibration_windows": 5}, "calibration_windows"),
            ({"alpha": 1.5}, "alpha"),
            ({"alpha": 0.001}, "n_permutations"),
            ({"quantile": 0.0}, "quantile"),
            ({"margin": 0.9}, "margin"),
            ({"bandwidth": 0.0}, "bandwidth"),
            ({"max_reference": 1}, "max_reference"),
        ],
    )
    def test_invalid_argument_names_parameter(self, kwargs, name):
        with pytest.raises(ConfigError, match=name):
            MMDDriftTest(np.random.default_rng(0).normal(size=(1000, 2)), **kwargs)

    def test_one_dimensional_reference_raises(self):
        with pytest.raises(DataValidationError, match="2-D"):
            MMDDriftTest(np.zeros(1000))
