import json
import logging

import pytest

from mycelium.drift import Action, DomainSignals, DriftStatus, FeatureDriftResult, decide


def feature_result(status: DriftStatus, score: float | None = None, threshold: float | None = None) -> FeatureDriftResult:
    tested = status is not DriftStatus.INSUFFICIENT_DATA
    return FeatureDriftResult(
        status=status,
        score=score,
        threshold=threshold,
        score_feature="pressure" if tested else None,
        statistic={"pressure": score},
        effect_size={"pressure": score},
        feature_threshold={"pressure": 0.175},
        p_value={"pressure": 1e-9 if tested else None},
        p_value_adjusted={"pressure": 1e-9 if tested else None},
        psi={"pressure": 0.3 if tested else None},
        test_name={"pressure": "ks"},
        drifted_features=("pressure",) if status is DriftStatus.DRIFT else (),
        top_features=("pressure",) if tested else (),
        n_rows=500 if tested else 8,
    )


DRIFT = feature_result(DriftStatus.DRIFT, 0.559, 0.175)
STABLE = feature_result(DriftStatus.STABLE, 0.041, 0.175)
INSUFFICIENT = feature_result(DriftStatus.INSUFFICIENT_DATA)
MINIMUMS = {"new_domain_min_samples": 200, "min_patch_samples": 200}

# (signals, expected action, phrases the reason must contain)
CASES = [
    (dict(domain=None, state="unknown", new_domain_samples=50), Action.IGNORE, ["50 inputs", "150 more samples", "minimum 200"]),
    (dict(domain=None, state="unknown", new_domain_samples=200), Action.NEW_EXPERT, ["200 inputs", "minimum of 200"]),
    (dict(domain="digits", state="cold", feature_drift=DRIFT, persistent_drift=True), Action.REACTIVATE, ["'digits' is cold"]),
    (dict(domain="digits", state="remembering"), Action.IGNORE, ["'remembering'", "until it is hot"]),
    (
        dict(domain="rain", state="hot", feature_drift=DRIFT, persistent_drift=True, labelled_samples=500),
        Action.PATCH,
        ["score 0.559 > threshold 0.175", "'pressure'", "500 labelled samples", "minimum 200"],
    ),
    (
        dict(domain="rain", state="hot", feature_drift=STABLE, performance_drift=True, labelled_samples=200),
        Action.PATCH,
        ["Performance drift", "200 labelled samples"],
    ),
    (
        dict(domain="rain", state="hot", feature_drift=INSUFFICIENT, persistent_drift=True, labelled_samples=300),
        Action.PATCH,
        ["Feature drift persisted over consecutive windows, and 300 labelled samples"],
    ),
    (
        dict(domain="rain", state="hot", feature_drift=DRIFT, persistent_drift=True, labelled_samples=120),
        Action.IGNORE,
        ["only 120 labelled samples", "80 short", "200 needed"],
    ),
    (
        dict(domain="rain", state="hot", feature_drift=DRIFT, persistent_drift=False, labelled_samples=500),
        Action.IGNORE,
        ["not yet persistent", "score 0.559 > threshold 0.175"],
    ),
    (dict(domain="rain", state="hot", feature_drift=STABLE), Action.IGNORE, ["No drift", "score 0.041 <= threshold 0.175"]),
    (dict(domain="rain", state="hot", feature_drift=INSUFFICIENT), Action.IGNORE, ["8 non-empty rows"]),
    (dict(domain="rain", state="hot"), Action.IGNORE, ["No drift", "no feature-drift result"]),
]


@pytest.mark.parametrize(("signals", "action", "phrases"), CASES)
def test_policy_table(signals, action, phrases):
    decision = decide(DomainSignals(**MINIMUMS, **signals))
    assert decision.action is action
    assert decision.domain == signals["domain"]
    for phrase in phrases:
        assert phrase in decision.reason
    assert decision.reason.endswith(".")


def test_decision_is_json_serialisable():
    signals = DomainSignals(domain="rain", state="hot", feature_drift=DRIFT, persistent_drift=True, labelled_samples=500, **MINIMUMS)
    decoded = json.loads(json.dumps(decide(signals).to_dict()))
    assert decoded["action"] == "patch"
    assert decoded["evidence"]["feature_drift"]["score"] == 0.559
    assert decoded["evidence"]["labelled_samples"] == 500


def test_decision_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="mycelium.drift.policy"):
        decide(DomainSignals(domain="digits", state="cold", **MINIMUMS))
    assert "reactivate" in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("labelled_samples", -1), ("new_domain_samples", -5), ("min_patch_samples", -1), ("new_domain_min_samples", -1)],
)
def test_invalid_counts_raise(field, value):
    arguments = {"domain": "rain", "state": "hot", **MINIMUMS, field: value}
    with pytest.raises(ValueError, match=field):
        DomainSignals(**arguments)
