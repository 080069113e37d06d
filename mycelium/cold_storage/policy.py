"""Sweep policy chosen by name in params.yaml (``cold_storage.policy``)."""

from __future__ import annotations

import math

from mycelium.cold_storage.activity import activity_sweep
from mycelium.cold_storage.sweep import Eviction, SweepCandidate, lru_sweep
from mycelium.config import ColdStorage
from mycelium.errors import ConfigError

SWEEP_POLICIES = ("lru", "activity")


def select_evictions(
    settings: ColdStorage,
    candidates: list[SweepCandidate],
    *,
    now: float,
    budget_bytes: int | None = None,
    evict_idle: bool = True,
) -> list[Eviction]:
    """Return the domains that ``settings.policy`` moves to cold storage, with reasons.

    Args:
        settings: the cold-storage settings: policy, budget, ``max_idle_s`` and the
            reload-cost estimate of the activity policy.
        candidates: the hot domains. Set ``pinned`` on the ones that must stay hot.
        now: current time in seconds, on the clock that set ``last_used``.
        budget_bytes: hot-memory budget; ``settings.hot_budget_bytes`` by default. Pass
            less to make room for a domain about to become hot.
        evict_idle: when False, only the budget evicts, never idleness.

    Raises:
        ConfigError: ``settings.policy`` is not a known policy.
    """
    budget = settings.hot_budget_bytes if budget_bytes is None else budget_bytes
    max_idle_s = settings.max_idle_s if evict_idle else math.inf
    if settings.policy == "lru":
        return lru_sweep(candidates, now=now, max_idle_s=max_idle_s, budget_bytes=budget)
    if settings.policy == "activity":
        # The routing controller decays activity with half-life max_idle_s, so the policy does too.
        return activity_sweep(
            candidates,
            now=now,
            max_idle_s=max_idle_s,
            budget_bytes=budget,
            half_life_s=settings.max_idle_s,
            reload_base_s=settings.reload_base_s,
            reload_bytes_per_s=settings.reload_bytes_per_s,
        )
    raise ConfigError(f"Unknown cold_storage.policy {settings.policy!r}: use one of {list(SWEEP_POLICIES)}.")
