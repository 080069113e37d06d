"""lru_sweep: idle domains go first, then least recently used ones until the hot set fits."""

import pytest

from mycelium.cold_storage.sweep import SweepCandidate, lru_sweep

NOW = 100_000.0
MAX_IDLE_S = 18_000.0
LARGE_BUDGET = 10**9


def candidate(domain, last_used, hot_bytes=100, *, pinned=False, uses=1, activity=1.0):
    return SweepCandidate(domain, last_used, uses, activity, hot_bytes, pinned)


def sweep(candidates, *, budget_bytes=LARGE_BUDGET, now=NOW, max_idle_s=MAX_IDLE_S):
    return lru_sweep(candidates, now=now, max_idle_s=max_idle_s, budget_bytes=budget_bytes)


def test_nothing_to_sweep():
    assert sweep([]) == []
    assert sweep([candidate("a", NOW - 10), candidate("b", NOW)]) == []


def test_idle_domain_is_evicted_with_numbers():
    evictions = sweep([candidate("idle", NOW - 20_000), candidate("busy", NOW - 60)])

    assert [e.domain for e in evictions] == ["idle"]
    assert evictions[0].reason == "idle for 20000 s, more than max_idle_s=18000 s"


def test_idle_exactly_max_idle_stays_hot():
    assert sweep([candidate("edge", NOW - MAX_IDLE_S)]) == []
    assert [e.domain for e in sweep([candidate("edge", NOW - MAX_IDLE_S - 1)])] == ["edge"]


def test_pinned_domain_is_never_evicted():
    candidates = [
        candidate("pinned-idle", 0.0, hot_bytes=500, pinned=True),
        candidate("pinned-never-used", None, hot_bytes=500, pinned=True),
    ]

    assert sweep(candidates, budget_bytes=1) == []


def test_budget_evicts_least_recently_used_first():
    candidates = [
        candidate("newest", NOW - 10),
        candidate("oldest", NOW - 300),
        candidate("middle", NOW - 200),
        candidate("newer", NOW - 100),
    ]

    evictions = sweep(candidates, budget_bytes=250)

    assert [e.domain for e in evictions] == ["oldest", "middle"]
    assert evictions[0].reason == (
        "hot set is 400 bytes, over the 250-byte budget; least recently used (idle 300 s)"
    )
    assert evictions[1].reason == (
        "hot set is 300 bytes, over the 250-byte budget; least recently used (idle 200 s)"
    )


def test_budget_stops_once_hot_set_fits():
    candidates = [candidate("big-old", NOW - 300, hot_bytes=900), candidate("small-new", NOW - 10, hot_bytes=100)]

    assert [e.domain for e in sweep(candidates, budget_bytes=500)] == ["big-old"]


def test_pinned_bytes_count_toward_budget():
    candidates = [
        candidate("pinned", NOW - 500, hot_bytes=300, pinned=True),
        candidate("free", NOW - 10, hot_bytes=100),
    ]

    evictions = sweep(candidates, budget_bytes=350)

    assert [e.domain for e in evictions] == ["free"]
    assert "hot set is 400 bytes, over the 350-byte budget" in evictions[0].reason


def test_never_used_domain_goes_first():
    candidates = [candidate("used", 4_900.0), candidate("never-used", None)]

    evictions = sweep(candidates, budget_bytes=150, now=5_000.0)

    assert [e.domain for e in evictions] == ["never-used"]
    assert "idle 5000 s" in evictions[0].reason


def test_idle_and_budget_reasons_in_one_sweep():
    candidates = [
        candidate("idle", NOW - 30_000),
        candidate("old", NOW - 400),
        candidate("new", NOW - 10),
    ]

    evictions = sweep(candidates, budget_bytes=150)

    assert [(e.domain, e.reason.split(",")[0]) for e in evictions] == [
        ("idle", "idle for 30000 s"),
        ("old", "hot set is 200 bytes"),
    ]


def test_equal_last_use_breaks_ties_by_name():
    candidates = [candidate("b", NOW - 100), candidate("a", NOW - 100), candidate("c", NOW - 100)]

    assert [e.domain for e in sweep(candidates, budget_bytes=100)] == ["a", "b"]


@pytest.mark.parametrize("activity", [0.0, 1e6])
def test_lru_ignores_use_counts(activity):
    candidates = [
        candidate("old-but-busy", NOW - 300, uses=10**6, activity=activity),
        candidate("recent", NOW - 10, uses=1, activity=0.0),
    ]

    assert [e.domain for e in sweep(candidates, budget_bytes=150)] == ["old-but-busy"]
