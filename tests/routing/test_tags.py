"""Hierarchical tags: normalisation, ancestors and folder names."""

import pytest

from mycelium.errors import RoutingError
from mycelium.routing.tags import normalize_tag, safe_name, tag_ancestors

# (raw tag, normalised tag, ancestors most specific first, folder name)
VALID = [
    ("vision", "vision", ["vision"], "vision"),
    ("vision/digits", "vision/digits", ["vision/digits", "vision"], "vision%2Fdigits"),
    (
        "vision/digits/uci",
        "vision/digits/uci",
        ["vision/digits/uci", "vision/digits", "vision"],
        "vision%2Fdigits%2Fuci",
    ),
    ("Vision/Digits/UCI", "vision/digits/uci", ["vision/digits/uci", "vision/digits", "vision"], "vision%2Fdigits%2Fuci"),
    ("/weather/rainfall/", "weather/rainfall", ["weather/rainfall", "weather"], "weather%2Frainfall"),
    ("  tabular/segments \n", "tabular/segments", ["tabular/segments", "tabular"], "tabular%2Fsegments"),
    ("a1/b_2/c.3/d-4", "a1/b_2/c.3/d-4", ["a1/b_2/c.3/d-4", "a1/b_2/c.3", "a1/b_2", "a1"], "a1%2Fb_2%2Fc.3%2Fd-4"),
    ("0/9", "0/9", ["0/9", "0"], "0%2F9"),
]

INVALID = [
    "",
    "   ",
    "/",
    "//",
    "vision//digits",
    "vision/ digits",
    "vision digits",
    "vision/../secrets",
    "vision/./digits",
    "_vision",
    "vision/-digits",
    "vision/.hidden",
    "vision\\digits",
    "vision/digits/*",
    "vision/chiffres/é",
]


@pytest.mark.parametrize(("raw", "normalized", "ancestors", "folder"), VALID)
def test_normalize_tag(raw, normalized, ancestors, folder):
    assert normalize_tag(raw) == normalized


@pytest.mark.parametrize(("raw", "normalized", "ancestors", "folder"), VALID)
def test_tag_ancestors_most_specific_first(raw, normalized, ancestors, folder):
    assert tag_ancestors(raw) == ancestors


@pytest.mark.parametrize(("raw", "normalized", "ancestors", "folder"), VALID)
def test_safe_name(raw, normalized, ancestors, folder):
    assert safe_name(raw) == folder
    assert "/" not in safe_name(raw)


@pytest.mark.parametrize("tag", INVALID)
@pytest.mark.parametrize("function", [normalize_tag, tag_ancestors, safe_name])
def test_invalid_tag_raises_routing_error(function, tag):
    with pytest.raises(RoutingError) as raised:
        function(tag)

    assert repr(tag) in str(raised.value)
    assert "vision/digits/uci" in str(raised.value)


def test_safe_name_is_one_to_one():
    assert safe_name("a/b") != safe_name("a__b")
