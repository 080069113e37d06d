"""RoutingTable.records_by_tag stays in step with the tag and domain indexes.

Route decisions read a domain's record through this lookup, so a stale entry would route
to a replaced record or to a tag's previous domain.
"""

from pathlib import Path

import pytest

from mycelium.routing.controller import DomainRecord, MetaController, RoutingTable
from mycelium.routing.resolution import decide_route
from mycelium.routing.table import TagIndex


def two_domain_table() -> RoutingTable:
    table = RoutingTable()
    table.domains["a"] = DomainRecord("a", ["a", "shared"], version=1)
    table.domains["b"] = DomainRecord("b", ["b"], version=1)
    table.tags.update({"a": "a", "shared": "a", "b": "b"})
    return table


def move_shared_tag_with_setitem(table: RoutingTable) -> None:
    table.tags["shared"] = "b"


def move_shared_tag_with_update(table: RoutingTable) -> None:
    table.tags.update(shared="b")


def move_shared_tag_with_or(table: RoutingTable) -> None:
    table.tags |= {"shared": "b"}


def move_shared_tag_with_pop_and_setdefault(table: RoutingTable) -> None:
    table.tags.pop("shared")
    assert decide_route(table, ["shared", "b"]).domain == "b"
    table.tags.setdefault("shared", "b")


def move_shared_tag_with_del(table: RoutingTable) -> None:
    del table.tags["shared"]
    table.tags["shared"] = "b"


def move_shared_tag_with_clear(table: RoutingTable) -> None:
    table.tags.clear()
    table.tags.update({"a": "a", "b": "b", "shared": "b"})


def move_shared_tag_with_popitem(table: RoutingTable) -> None:
    while table.tags:
        table.tags.popitem()
    table.tags.update({"a": "a", "b": "b", "shared": "b"})


def replace_tag_index_with_plain_dict(table: RoutingTable) -> None:
    table.tags = {"a": "a", "b": "b", "shared": "b"}


def replace_domain_b_and_move_tag(table: RoutingTable) -> None:
    table.domains["b"] = DomainRecord("b", ["b", "shared"], version=2)
    table.tags["shared"] = "b"


def store_domain_b_unparsed_and_move_tag(table: RoutingTable) -> None:
    table.domains.set_stored("b", {"name": "b", "tags": ["b", "shared"], "version": 2})
    table.tags["shared"] = "b"


@pytest.mark.parametrize(
    "move",
    [
        move_shared_tag_with_setitem,
        move_shared_tag_with_update,
        move_shared_tag_with_or,
        move_shared_tag_with_pop_and_setdefault,
        move_shared_tag_with_del,
        move_shared_tag_with_clear,
        move_shared_tag_with_popitem,
        replace_tag_index_with_plain_dict,
        replace_domain_b_and_move_tag,
        store_domain_b_unparsed_and_move_tag,
    ],
)
def test_decision_follows_a_moved_tag(move):
    table = two_domain_table()
    assert decide_route(table, "shared/x").domain == "a"

    move(table)

    decision = decide_route(table, "shared/x")
    assert decision.domain == "b"
    assert decision.record is table.domains["b"]
    assert isinstance(table.tags, TagIndex)


def test_decision_returns_the_replacing_record():
    table = two_domain_table()
    first = decide_route(table, "a").record

    table.domains["a"] = DomainRecord("a", ["a", "shared"], version=7)

    decision = decide_route(table, "a/x")
    assert decision.version == 7
    assert decision.record is table.domains["a"]
    assert decision.record is not first


def test_deleted_domain_no_longer_matches_its_tags():
    table = two_domain_table()
    assert decide_route(table, ["b", "nothing"]).domain == "b"

    del table.domains["b"]
    del table.tags["b"]

    assert decide_route(table, ["b", "a"]).domain == "a"


def test_loaded_record_parsed_once(tmp_path: Path):
    writer = MetaController(tmp_path / "routing")
    writer.register(DomainRecord("a", ["a", "shared"]), reason="register a")
    table = MetaController(tmp_path / "routing").table

    by_name_tag = decide_route(table, "a").record
    by_other_tag = decide_route(table, "shared").record

    assert by_name_tag is by_other_tag is table.domains["a"]


def test_controller_decisions_see_every_recorded_change(tmp_path: Path):
    controller = MetaController(tmp_path / "routing")
    controller.register(DomainRecord("a", ["a", "shared"]), reason="register a")
    controller.register(DomainRecord("b", ["b"]), reason="register b")
    assert decide_route(controller.table, "shared").domain == "a"

    controller.update("a", tags=["a"], reason="free the tag")
    controller.update("b", tags=["b", "shared"], reason="take the tag")
    assert decide_route(controller.table, "shared/x").domain == "b"

    controller.record_use("b", 5)
    controller.flush_locality()
    decision = decide_route(controller.table, "shared")
    assert decision.record.locality.uses == 5
    assert decision.record is controller.table.domains["b"]
