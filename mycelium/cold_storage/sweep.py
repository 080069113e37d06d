"""Sweep policies: which hot subgraphs move to cold storage, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SweepCandidate:
    """A hot domain with the locality facts the sweep policy reads.

    ``activity`` is the use count decayed up to ``last_used`` (see ``routing.controller.
    Locality``). ``reload_seconds`` is the measured time of the domain's last restore, or
    None when it was never restored.
    """

    domain: str
    last_used: float | None
    uses: int
    activity: float
    hot_bytes: int
    pinned: bool = False
    reload_seconds: float | None = None


@dataclass(frozen=True)
class Eviction:
    """A domain chosen for cold storage and the reason, logged with the move."""

    domain: str
    reason: str


def lru_sweep(
    candidates: list[SweepCandidate], *, now: float, max_idle_s: float, budget_bytes: int
) -> list[Eviction]:
    """Pick domains idle for more than ``max_idle_s``, then least recently used ones until the
    hot set fits in ``budget_bytes``. Pinned domains are never picked.

    A domain never used counts as used at time 0, so it is the first to go.
    """
    evictions: list[Eviction] = []
    hot_bytes = sum(c.hot_bytes for c in candidates)
    by_recency = sorted((c for c in candidates if not c.pinned), key=lambda c: (c.last_used or 0.0, c.domain))
    for candidate in by_recency:
        idle = now - (candidate.last_used or 0.0)
        if idle > max_idle_s:
            reason = f"idle for {idle:.0f} s, more than max_idle_s={max_idle_s:.0f} s"
        elif hot_bytes > budget_bytes:
            reason = (
                f"hot set is {hot_bytes} bytes, over the {budget_bytes}-byte budget; "
                f"least recently used (idle {idle:.0f} s)"
            )
        else:
            continue
        evictions.append(Eviction(candidate.domain, reason))
        hot_bytes -= candidate.hot_bytes
    return evictions


def keep_reason(
    candidate: SweepCandidate, *, now: float, max_idle_s: float, hot_bytes: int, budget_bytes: int
) -> str:
    """Return why a sweep at ``now`` keeps ``candidate`` hot, for a hot set of ``hot_bytes``.

    Both policies move a domain idle for more than ``max_idle_s``, then others while the hot
    set is over ``budget_bytes``, and never a pinned domain.
    """
    if candidate.pinned:
        return "pinned in the routing table or in cold_storage.pinned"
    if candidate.last_used is None:
        used = "never used"
    else:
        used = f"last used {now - candidate.last_used:.0f} s ago, within cold_storage.max_idle_s={max_idle_s:.0f} s"
    if hot_bytes <= budget_bytes:
        return f"{used}, and the hot set of {hot_bytes} bytes fits cold_storage.hot_budget_bytes={budget_bytes}"
    return f"{used}; the hot set of {hot_bytes} bytes is over cold_storage.hot_budget_bytes={budget_bytes}"
