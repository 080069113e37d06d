"""Activity-weighted sweep: decayed uses times reload cost per byte decides who leaves under budget."""

import math

import pytest

from mycelium.cold_storage.activity import ActivityPolicy, activity_sweep
from mycelium.cold_storage.policy import select_evictions
from mycelium.cold_storage.sweep import SweepCandidate
from mycelium.config import ColdStorage, Quantization
from mycelium.errors import ConfigError

NOW = 100_000.0
HALF_LIFE_S = 3_600.0
NO_IDLE_LIMIT = math.inf


def candidate(domain, *, idle_s=0.0, activity=10.0, hot_bytes=1_000, reload_seconds=1.0, pinned=False):
    last_used = None if idle_s is None else NOW - idle_s
    return SweepCandidate(domain, last_used, int(activity), activity, hot_bytes, pinned, reload_seconds)


def sweep(candidates, budget_bytes, *, max_idle_s=NO_IDLE_LIMIT):
    evictions = activity_sweep(
        candidates, now=NOW, max_idle_s=max_idle_s, budget_bytes=budget_bytes, half_life_s=HALF_LIFE_S
    )
    return [eviction.domain for eviction in evictions]


# Each case: two domains that differ in one term, a budget that fits only one, and the one evicted.
# The evicted name sorts after the kept one, so a policy that ignored the term would evict the
# other domain on the name tie-break and fail.
CASES = {
    "recency: older of equal use goes": (
        candidate("recent", idle_s=60), candidate("older", idle_s=1_800), "older"),
    "frequency: rarer of equal recency goes": (
        candidate("busy", activity=50), candidate("rare", activity=5), "rare"),
    "reload cost: cheaper to reload goes": (
        candidate("costly", reload_seconds=4.0), candidate("quick", reload_seconds=0.5), "quick"),
    "size: larger of equal value goes": (
        candidate("small", hot_bytes=1_000), candidate("very-large", hot_bytes=1_500), "very-large"),
    "frequency beats one half-life of recency": (
        candidate("busy-an-hour-ago", idle_s=HALF_LIFE_S, activity=100), candidate("few-now", activity=10), "few-now"),
    "recency beats frequency after ten half-lives": (
        candidate("busy-long-ago", idle_s=10 * HALF_LIFE_S, activity=100), candidate("few-now", activity=10),
        "busy-long-ago"),
    "reload cost outweighs double frequency": (
        candidate("busy-cheap", activity=20, reload_seconds=0.5), candidate("rare-costly", activity=10, reload_seconds=2.0),
        "busy-cheap"),
    "never used goes before used": (
        candidate("never-used", idle_s=None, activity=0), candidate("used-once", idle_s=7_200, activity=1), "never-used"),
}


@pytest.mark.parametrize(("keep_or_go", "other", "evicted"), list(CASES.values()), ids=list(CASES))
def test_budget_evicts_lowest_score(keep_or_go, other, evicted):
    budget = max(keep_or_go.hot_bytes, other.hot_bytes)

    assert sweep([keep_or_go, other], budget) == [evicted]
    assert sweep([other, keep_or_go], budget) == [evicted]


def test_score_known_answer():
    policy = ActivityPolicy(half_life_s=HALF_LIFE_S)
    score = policy.score(candidate("a", idle_s=2 * HALF_LIFE_S, activity=8.0, hot_bytes=1_000, reload_seconds=1.5), NOW)

    assert score.decayed_uses == pytest.approx(2.0)
    assert score.idle_s == 2 * HALF_LIFE_S
    assert score.reload_seconds == 1.5
    assert score.value == pytest.approx(2.0 * 1.5 / 1_000)


def test_unmeasured_reload_cost_is_estimated_from_size():
    policy = ActivityPolicy(half_life_s=HALF_LIFE_S, reload_base_s=0.5, reload_bytes_per_s=1_000_000.0)

    score = policy.score(candidate("a", hot_bytes=2_000_000, reload_seconds=None), NOW)

    assert score.reload_seconds == pytest.approx(0.5 + 2.0)


def test_under_budget_nothing_is_evicted():
    candidates = [candidate("a", activity=0), candidate("b", idle_s=None, activity=0)]

    assert sweep(candidates, budget_bytes=2_000) == []


def test_budget_stops_once_hot_set_fits():
    candidates = [
        candidate("rare", activity=1),
        candidate("middle", activity=5),
        candidate("busy", activity=50),
    ]

    assert sweep(candidates, budget_bytes=1_500) == ["rare", "middle"]
    assert sweep(candidates, budget_bytes=2_000) == ["rare"]


def test_pinned_domain_is_never_evicted():
    candidates = [
        candidate("pinned-unused", idle_s=None, activity=0, pinned=True),
        candidate("busy", activity=50),
    ]

    assert sweep(candidates, budget_bytes=1_000) == ["busy"]
    assert sweep(candidates, budget_bytes=1, max_idle_s=0.0) == ["busy"]


def test_pinned_bytes_count_toward_budget():
    candidates = [candidate("pinned", hot_bytes=3_000, pinned=True), candidate("free", activity=1_000)]

    evictions = activity_sweep(candidates, now=NOW, max_idle_s=NO_IDLE_LIMIT, budget_bytes=3_500,
                               half_life_s=HALF_LIFE_S)

    assert [e.domain for e in evictions] == ["free"]
    assert evictions[0].reason.startswith("hot set is 4000 bytes, over the 3500-byte budget")


def test_idle_domain_goes_even_under_budget():
    candidates = [candidate("idle", idle_s=20_000, activity=1e6), candidate("edge", idle_s=18_000)]

    evictions = activity_sweep(candidates, now=NOW, max_idle_s=18_000, budget_bytes=10**9, half_life_s=HALF_LIFE_S)

    assert [e.domain for e in evictions] == ["idle"]
    assert evictions[0].reason == "idle for 20000 s, more than max_idle_s=18000 s"


def test_budget_reason_names_every_term():
    candidates = [candidate("rare", idle_s=HALF_LIFE_S, activity=4, reload_seconds=2.0), candidate("busy", activity=50)]

    evictions = activity_sweep(candidates, now=NOW, max_idle_s=NO_IDLE_LIMIT, budget_bytes=1_000,
                               half_life_s=HALF_LIFE_S)

    assert evictions[0].reason == (
        "hot set is 2000 bytes, over the 1000-byte budget; lowest activity score 0.004 "
        "(decayed uses 2, idle 3600 s, reload cost 2 s, 1000 bytes)"
    )


def test_equal_scores_break_ties_by_recency_then_name():
    candidates = [candidate("b", activity=0, idle_s=10), candidate("a", activity=0, idle_s=10),
                  candidate("c", activity=0, idle_s=20)]

    assert sweep(candidates, budget_bytes=1_000) == ["c", "a"]


@pytest.mark.parametrize("field", ["half_life_s", "reload_base_s", "reload_bytes_per_s"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_invalid_policy_setting_raises(field, value):
    settings = {"half_life_s": HALF_LIFE_S, field: value}

    with pytest.raises(ConfigError, match=field):
        ActivityPolicy(**settings)


class TestSelectEvictions:
    """``cold_storage.policy`` picks the function, so the same candidates give each policy's own evictions."""

    @staticmethod
    def settings(policy, budget_bytes=1_000):
        return ColdStorage(
            quantization=Quantization(default="int8"), buffer_size=500, buffer_min=100, smote_k=5,
            hot_budget_bytes=budget_bytes, max_idle_s=HALF_LIFE_S, sweep_every=10, probe_rows=64, policy=policy,
        )

    @staticmethod
    def candidates():
        # LRU drops the busy domain used a little earlier; the activity policy drops the rare one.
        return [candidate("busy-earlier", idle_s=600, activity=100), candidate("rare-now", idle_s=0, activity=1)]

    @pytest.mark.parametrize(("policy", "evicted"), [("lru", "busy-earlier"), ("activity", "rare-now")])
    def test_policy_by_name(self, policy, evicted):
        evictions = select_evictions(self.settings(policy), self.candidates(), now=NOW)

        assert [e.domain for e in evictions] == [evicted]

    @pytest.mark.parametrize("policy", ["lru", "activity"])
    def test_evict_idle_false_keeps_idle_domains(self, policy):
        idle = [candidate("idle", idle_s=10 * HALF_LIFE_S)]

        assert [e.domain for e in select_evictions(self.settings(policy), idle, now=NOW)] == ["idle"]
        assert select_evictions(self.settings(policy), idle, now=NOW, evict_idle=False) == []

    @pytest.mark.parametrize("policy", ["lru", "activity"])
    def test_smaller_budget_makes_room(self, policy):
        candidates = [candidate("a", activity=1, idle_s=60)]

        assert select_evictions(self.settings(policy), candidates, now=NOW, evict_idle=False) == []
        evictions = select_evictions(self.settings(policy), candidates, now=NOW, budget_bytes=500, evict_idle=False)
        assert [e.domain for e in evictions] == ["a"]

    def test_unknown_policy_is_rejected_at_load(self):
        with pytest.raises(ValueError, match="policy"):
            self.settings("fifo")
