import math

import numpy as np
import pytest
from river import drift as river_drift

from mycelium.drift import PageHinkley
from mycelium.errors import ConfigError


def bernoulli_stream(seed: int, before: float = 0.1, after: float = 0.5, change: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(change) < before, rng.random(change) < after]).astype(float)


def alarm_indices(detector, stream) -> list[int]:
    alarms = []
    for i, x in enumerate(stream):
        detector.update(float(x))
        if detector.drift_detected:
            alarms.append(i)
    return alarms


def test_known_answer_error_rate_increase():
    # Bernoulli(0.1) errors for 1,000 samples, then Bernoulli(0.5), seed 0.
    alarms = alarm_indices(PageHinkley(), bernoulli_stream(0))
    assert alarms == [1105]


@pytest.mark.parametrize("seed", range(5))
def test_first_alarm_matches_river(seed):
    stream = bernoulli_stream(seed)
    ours = alarm_indices(PageHinkley(), stream)
    # river 0.26.1 computes the same Page-Hinkley statistic; its default mode is "both".
    theirs = alarm_indices(river_drift.PageHinkley(mode="up"), stream)
    assert ours
    assert theirs
    assert abs(ours[0] - theirs[0]) <= 2
    assert ours[0] >= 1000


def test_stationary_stream_raises_no_alarm():
    stream = np.random.default_rng(1).random(5000) < 0.1
    assert alarm_indices(PageHinkley(), stream) == []


def test_up_mode_ignores_decrease():
    stream = bernoulli_stream(2, before=0.5, after=0.1)
    assert alarm_indices(PageHinkley(mode="up"), stream) == []


def test_down_mode_detects_decrease():
    stream = bernoulli_stream(2, before=0.5, after=0.1)
    alarms = alarm_indices(PageHinkley(mode="down"), stream)
    assert alarms
    assert alarms[0] >= 1000


def test_both_mode_detects_either_direction():
    up = alarm_indices(PageHinkley(mode="both"), bernoulli_stream(3))
    down = alarm_indices(PageHinkley(mode="both"), bernoulli_stream(3, before=0.5, after=0.1))
    assert up and up[0] >= 1000
    assert down and down[0] >= 1000


def test_no_alarm_before_min_instances():
    detector = PageHinkley(min_instances=30, threshold=1.0, alpha=1.0)
    alarms = alarm_indices(detector, [0.0] * 10 + [100.0] * 30)
    assert alarms[0] == 29


def test_update_after_alarm_starts_fresh():
    detector = PageHinkley(min_instances=1, threshold=1.0)
    for x in [0.0, 0.0, 10.0]:
        detector.update(x)
    assert detector.drift_detected
    assert detector.n == 3
    detector.update(0.0)
    assert not detector.drift_detected
    assert detector.n == 1


def test_reset_clears_state():
    detector = PageHinkley(min_instances=1, threshold=1.0)
    for x in [0.0, 0.0, 10.0]:
        detector.update(x)
    detector.reset()
    assert not detector.drift_detected
    assert detector.n == 0
    assert detector.statistic == 0.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_instances": 0}, "min_instances"),
        ({"min_instances": 2.5}, "min_instances"),
        ({"delta": -0.1}, "delta"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"mode": "sideways"}, "mode"),
    ],
)
def test_invalid_argument_names_parameter(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        PageHinkley(**kwargs)


def test_non_finite_value_raises():
    detector = PageHinkley()
    with pytest.raises(ValueError, match="non-finite"):
        detector.update(math.nan)


STANDARDIZED = {"delta": 0.1, "threshold": 60.0, "alpha": 1.0, "standardize": True}


def test_known_answer_standardized():
    # The params.yaml setting on the seed-0 streams above: Bernoulli(0.1) then Bernoulli(0.5),
    # and rare errors, Bernoulli(0.02) then Bernoulli(0.3).
    assert alarm_indices(PageHinkley(**STANDARDIZED), bernoulli_stream(0)) == [1039]
    assert alarm_indices(PageHinkley(**STANDARDIZED), bernoulli_stream(0, before=0.02, after=0.3)) == [1017]


def test_standardized_alarms_sooner_on_rare_errors():
    stream = bernoulli_stream(0, before=0.02, after=0.3)
    assert alarm_indices(PageHinkley(), stream) == [1181]
    assert alarm_indices(PageHinkley(**STANDARDIZED), stream)[0] < 1181


def test_forgetting_raises_false_alarms_on_stable_stream():
    # 40,000 values at a constant 10% error rate: no change to detect.
    stream = np.random.default_rng(1).random(40000) < 0.1
    forgetting = dict(STANDARDIZED, alpha=1 - 0.0001)
    assert alarm_indices(PageHinkley(**forgetting), stream) == [19058, 29277]
    assert alarm_indices(PageHinkley(**STANDARDIZED), stream) == []


def test_std_is_running_population_std():
    values = [0.0, 1.0, 1.0, 0.0, 1.0]
    detector = PageHinkley(standardize=True)
    for x in values:
        detector.update(x)
    assert detector.std == pytest.approx(np.std(values))


def test_min_std_bounds_the_scale():
    # After 1,000 zeros a single 1 is (1 - 1/1001) / 0.0316 = 31.6 running standard deviations
    # away; min_std=0.05 caps it at (1 - 1/1001) / 0.05 = 19.98.
    stream = [0.0] * 1000 + [1.0]
    bounded = PageHinkley(min_instances=1, delta=0.0, threshold=100.0, standardize=True, min_std=0.05)
    loose = PageHinkley(min_instances=1, delta=0.0, threshold=100.0, standardize=True, min_std=0.01)
    for x in stream:
        bounded.update(x)
        loose.update(x)
    assert bounded.statistic == pytest.approx((1 - 1 / 1001) / 0.05)
    assert loose.statistic == pytest.approx((1 - 1 / 1001) / math.sqrt(1000 / 1001**2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"standardize": 1}, "standardize"),
        ({"min_std": 0.0}, "min_std"),
        ({"min_std": math.nan}, "min_std"),
    ],
)
def test_invalid_standardization_names_parameter(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        PageHinkley(**kwargs)
