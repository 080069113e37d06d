"""The meta controller: tags -> domains -> subgraphs, with lifecycle states and history."""

from mycelium.routing.chains import ChainPlan, ChainStage, UpstreamInput
from mycelium.routing.controller import DomainRecord, Locality, MetaController, RoutingTable
from mycelium.routing.lifecycle import LEGAL_TRANSITIONS, State, check_transition
from mycelium.routing.resolution import RouteDecision, TagMatch, decide_route
from mycelium.routing.tags import normalize_tag, safe_name, tag_ancestors

__all__ = [
    "ChainPlan", "ChainStage", "DomainRecord", "LEGAL_TRANSITIONS", "Locality", "MetaController", "RouteDecision",
    "RoutingTable", "State", "TagMatch", "UpstreamInput", "check_transition", "decide_route", "normalize_tag", "safe_name", "tag_ancestors",
]
