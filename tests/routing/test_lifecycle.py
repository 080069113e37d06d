"""Lifecycle states: the seven legal transitions pass, the other 18 ordered pairs raise."""

import itertools

import pytest

from mycelium.errors import IllegalTransitionError
from mycelium.routing.lifecycle import LEGAL_TRANSITIONS, State, check_transition

TRAINING, HOT, COLD, REMEMBERING, RETIRED = State.TRAINING, State.HOT, State.COLD, State.REMEMBERING, State.RETIRED
EXPECTED_LEGAL = {
    (TRAINING, HOT),
    (HOT, COLD),
    (COLD, REMEMBERING),
    (REMEMBERING, HOT),
    (REMEMBERING, COLD),
    (HOT, RETIRED),
    (COLD, RETIRED),
}
ALL_PAIRS = list(itertools.product(State, State))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED_LEGAL]


def test_pair_table_covers_25_pairs():
    assert len(ALL_PAIRS) == 25
    assert len(ILLEGAL) == 18


def test_legal_transitions_match_lifecycle():
    assert set(LEGAL_TRANSITIONS) == EXPECTED_LEGAL


@pytest.mark.parametrize(("current", "target"), sorted(EXPECTED_LEGAL))
def test_legal_transition_returns_target(current, target):
    assert check_transition("vision/digits", current, target) is target


@pytest.mark.parametrize(("current", "target"), sorted(EXPECTED_LEGAL))
def test_legal_transition_accepts_strings(current, target):
    assert check_transition("vision/digits", current.value, target.value) is target


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_illegal_transition_names_both_states(current, target):
    with pytest.raises(IllegalTransitionError) as raised:
        check_transition("vision/digits", current, target)

    message = str(raised.value)
    assert f"from {current.value!r} to {target.value!r}" in message
    assert "'vision/digits'" in message


@pytest.mark.parametrize("target", list(State))
def test_retired_has_no_way_out(target):
    with pytest.raises(IllegalTransitionError, match="allowed states are: none"):
        check_transition("old/domain", RETIRED, target)


def test_error_lists_allowed_targets():
    with pytest.raises(IllegalTransitionError, match="allowed states are: cold, retired"):
        check_transition("vision/digits", HOT, REMEMBERING)
