"""Activity-weighted sweep: keep the domains whose reload would cost the most per byte kept hot.

Every hot domain gets a keep score::

    score = decayed_uses * reload_seconds / hot_bytes

``decayed_uses`` is the domain's use count with exponential decay up to ``now`` (half-life
``half_life_s``), so it grows with frequency and shrinks with the time since the last use.
``reload_seconds`` is the measured time of the domain's last restore, or the estimate
``reload_base_s + hot_bytes / reload_bytes_per_s`` before the first one. The score is thus
the expected reload work that keeping the domain hot saves, per byte of hot memory.

As in ``lru_sweep``, domains idle for more than ``max_idle_s`` go first. Then, while the
hot set is over its budget, the domain with the lowest score goes. Pinned domains are
never picked, but their bytes count toward the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mycelium.cold_storage.sweep import Eviction, SweepCandidate
from mycelium.errors import ConfigError


@dataclass(frozen=True)
class ActivityScore:
    """Keep score of one domain and the terms it is made of."""

    domain: str
    decayed_uses: float
    idle_s: float
    reload_seconds: float
    hot_bytes: int
    value: float


@dataclass(frozen=True)
class ActivityPolicy:
    """Activity-weighted sweep policy.

    Args:
        half_life_s: half-life of the use-count decay in seconds. Use the routing
            controller's ``activity_half_life_s``, so that decaying ``Locality.activity``
            to ``now`` continues the controller's own decay.
        reload_base_s: fixed part of the estimated reload time in seconds.
        reload_bytes_per_s: reload throughput of the estimate, in bytes of hot weights per
            second.

    Example::

        >>> policy = ActivityPolicy(half_life_s=3600.0)
        >>> busy = SweepCandidate("busy", last_used=0.0, uses=100, activity=100.0, hot_bytes=1000)
        >>> quiet = SweepCandidate("quiet", last_used=0.0, uses=1, activity=1.0, hot_bytes=1000)
        >>> [e.domain for e in policy.select([busy, quiet], now=0.0, max_idle_s=1e9, budget_bytes=1500)]
        ['quiet']
    """

    half_life_s: float
    reload_base_s: float = 0.5
    reload_bytes_per_s: float = 50_000_000.0

    def __post_init__(self) -> None:
        for name in ("half_life_s", "reload_base_s", "reload_bytes_per_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"Invalid ActivityPolicy {name} {value!r}: use a positive finite number.")

    def score(self, candidate: SweepCandidate, now: float) -> ActivityScore:
        """Return the keep score of ``candidate`` at time ``now``.

        A domain never used counts as used at time 0, with no uses.
        """
        idle_s = max(0.0, now - (candidate.last_used or 0.0))
        decayed_uses = candidate.activity * math.pow(0.5, idle_s / self.half_life_s)
        reload_seconds = candidate.reload_seconds
        if reload_seconds is None:
            reload_seconds = self.reload_base_s + candidate.hot_bytes / self.reload_bytes_per_s
        value = decayed_uses * reload_seconds / max(candidate.hot_bytes, 1)
        return ActivityScore(candidate.domain, decayed_uses, idle_s, reload_seconds, candidate.hot_bytes, value)

    def select(
        self, candidates: list[SweepCandidate], *, now: float, max_idle_s: float, budget_bytes: int
    ) -> list[Eviction]:
        """Pick domains idle for more than ``max_idle_s``, then the lowest-scored ones until
        the hot set fits in ``budget_bytes``. Pinned domains are never picked.

        Ties in score go to the less recently used domain, then to the name.
        """
        hot_bytes = sum(c.hot_bytes for c in candidates)
        movable = [c for c in candidates if not c.pinned]
        scores = {c.domain: self.score(c, now) for c in movable}
        by_score = sorted(movable, key=lambda c: (scores[c.domain].value, c.last_used or 0.0, c.domain))

        evictions: list[Eviction] = []
        chosen: set[str] = set()
        for candidate in by_score:
            idle_s = scores[candidate.domain].idle_s
            if idle_s > max_idle_s:
                evictions.append(Eviction(candidate.domain, f"idle for {idle_s:.0f} s, more than max_idle_s={max_idle_s:.0f} s"))
                chosen.add(candidate.domain)
                hot_bytes -= candidate.hot_bytes
        for candidate in by_score:
            if hot_bytes <= budget_bytes:
                break
            if candidate.domain in chosen:
                continue
            evictions.append(Eviction(candidate.domain, _budget_reason(scores[candidate.domain], hot_bytes, budget_bytes)))
            hot_bytes -= candidate.hot_bytes
        return evictions


def activity_sweep(
    candidates: list[SweepCandidate],
    *,
    now: float,
    max_idle_s: float,
    budget_bytes: int,
    half_life_s: float,
    reload_base_s: float = 0.5,
    reload_bytes_per_s: float = 50_000_000.0,
) -> list[Eviction]:
    """Run ``ActivityPolicy(half_life_s, reload_base_s, reload_bytes_per_s).select``.

    Takes the same first arguments as ``lru_sweep``, so the two policies are interchangeable.
    """
    policy = ActivityPolicy(half_life_s, reload_base_s, reload_bytes_per_s)
    return policy.select(candidates, now=now, max_idle_s=max_idle_s, budget_bytes=budget_bytes)


def _budget_reason(score: ActivityScore, hot_bytes: int, budget_bytes: int) -> str:
    return (
        f"hot set is {hot_bytes} bytes, over the {budget_bytes}-byte budget; lowest activity score "
        f"{score.value:.3g} (decayed uses {score.decayed_uses:.3g}, idle {score.idle_s:.0f} s, "
        f"reload cost {score.reload_seconds:.3g} s, {score.hot_bytes} bytes)"
    )
