"""Lifecycle states of a domain and the transitions between them."""

from __future__ import annotations

from enum import Enum

from mycelium.errors import IllegalTransitionError


class State(str, Enum):
    """Lifecycle state of a domain's subgraph (its expert with its patches)."""

    TRAINING = "training"
    HOT = "hot"
    COLD = "cold"
    REMEMBERING = "remembering"
    RETIRED = "retired"


LEGAL_TRANSITIONS: frozenset[tuple[State, State]] = frozenset(
    {
        (State.TRAINING, State.HOT),
        (State.HOT, State.COLD),
        (State.COLD, State.REMEMBERING),
        (State.REMEMBERING, State.HOT),
        # The validation gate failed: roll back and stay cold.
        (State.REMEMBERING, State.COLD),
        (State.HOT, State.RETIRED),
        (State.COLD, State.RETIRED),
    }
)


def check_transition(domain: str, current: State | str, target: State | str) -> State:
    """Return ``target`` as a State if moving ``domain`` there from ``current`` is legal.

    Raises:
        IllegalTransitionError: the pair is not in LEGAL_TRANSITIONS. Nothing is ever
            hard-deleted, so there is no way out of ``retired``.
    """
    current, target = State(current), State(target)
    if (current, target) in LEGAL_TRANSITIONS:
        return target
    allowed = sorted(t.value for s, t in LEGAL_TRANSITIONS if s is current)
    raise IllegalTransitionError(
        f"Domain {domain!r} cannot go from {current.value!r} to {target.value!r}. "
        f"From {current.value!r} the allowed states are: {', '.join(allowed) or 'none'}."
    )
