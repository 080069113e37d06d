"""The meta controller: tags -> domains -> subgraphs, with lifecycle states and history."""

from mycelium.routing.controller import DomainRecord, Locality, MetaController, RoutingTable
from mycelium.routing.lifecycle import LEGAL_TRANSITIONS, State, check_transition
from mycelium.routing.tags import normalize_tag, safe_name, tag_ancestors

__all__ = [
    "DomainRecord", "LEGAL_TRANSITIONS", "Locality", "MetaController", "RoutingTable", "State",
    "check_transition", "normalize_tag", "safe_name", "tag_ancestors",
]
