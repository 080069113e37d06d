"""Tag resolution: which domain serves an input that carries one or more tags.

The rules, applied by ``decide_route``:

1. Each tag is matched on its own. Its prefixes are tried most specific first
   (``vision/digits/uci``, ``vision/digits``, ``vision``); the first prefix that is a
   registered tag or an alias decides. An alias prefix is replaced by its canonical tag and
   the rewritten tag is matched against registered tags only, so aliases are expanded once.
2. Among the tags that matched, the most specific match wins: the one whose registered tag
   has the most path segments. Tags that match nothing are ignored while another tag matches.
3. If equally specific matches lead to different domains, the input is ambiguous and a
   RoutingError names both domains and the tags that led to them.
4. A winning domain that is retired is a RoutingError naming its successor.
5. A winning domain with upstream inputs gets its chain plan: every domain of its chain,
   upstream first, with the version, patches and state that will serve it.

Every step is a dict lookup, so the time of a decision depends on the number of tags and
their depth (and, for a chained domain, the size of its chain), never on the number of
registered domains. A registered tag leads straight to its domain's record
(``RoutingTable.records_by_tag``), which saves a lookup in the domain index: in a table of
100,000 domains, each lookup costs mostly CPU cache misses.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from mycelium.errors import RoutingError
from mycelium.routing.chains import ChainPlan, UpstreamInput, plan_chain, with_versions
from mycelium.routing.lifecycle import State
from mycelium.routing.table import DomainRecord, RoutingTable
from mycelium.routing.tags import normalize_tag

# Error messages list at most this many registered tags or domains.
PREVIEW_LIMIT = 10
# The fix that ends the error of a tag that matches no domain; callers may replace it with their own.
UNTAGGED_ADVICE = "Send it untagged to route by domain inference."
# Default of a lookup that found nothing, since None is a value of RoutingTable.records_by_tag().
_ABSENT = object()


@dataclass(frozen=True)
class TagMatch:
    """The match of one input tag: the registered tag it reached and the alias used, if any."""

    tag: str
    registered_tag: str
    domain: str
    alias: str | None = None

    @property
    def specificity(self) -> int:
        return self.registered_tag.count("/") + 1


@dataclass(frozen=True)
class RouteDecision:
    """A routing decision and the facts that explain it.

    ``tags`` are the input's tags after normalisation, ``match`` is the tag match that won
    and ``ignored`` the input tags that matched no registered tag. ``chain`` lists the stages
    of a chained domain, and is None for a domain without upstream inputs.
    """

    domain: str
    version: int
    state: str
    tags: tuple[str, ...]
    match: TagMatch
    ignored: tuple[str, ...]
    record: DomainRecord = field(compare=False, repr=False)
    chain: ChainPlan | None = None

    def describe(self) -> str:
        """Return one line such as ``tag 'a/b/c' -> registered tag 'a/b' -> domain 'a/b' v2``.

        A chained domain adds its stages: ``...; chain: vision/digits v3 [a, b -> logits] -> ...``.
        """
        match = self.match
        via = f" via alias {match.alias!r}" if match.alias else ""
        line = (
            f"tag {match.tag!r}{via} -> registered tag {match.registered_tag!r} -> "
            f"domain {self.domain!r} v{self.version}"
        )
        if self.chain is not None:
            line += f"; chain: {self.chain.describe()}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "tags": list(self.tags),
            "tag": self.match.tag,
            "alias": self.match.alias,
            "registered_tag": self.match.registered_tag,
            "domain": self.domain,
            "version": self.version,
            "ignored": list(self.ignored),
            **({"chain": self.chain.to_dict()} if self.chain is not None else {}),
        }


def match_tag(table: RoutingTable, tag: str) -> TagMatch | None:
    """Return how ``tag`` (already normalised) reaches a registered tag, or None if it does not."""
    found = _match(table, table.records_by_tag(), tag)
    return None if found is None else found[0]


def _match(table: RoutingTable, records: dict[str, Any], tag: str) -> tuple[TagMatch, DomainRecord] | None:
    """Return the match of ``tag`` and its domain's record; ``records`` is ``table.records_by_tag()``."""
    end = len(tag)
    while end > 0:
        prefix = tag[:end]
        record = records.get(prefix, _ABSENT)
        if record is not _ABSENT:
            if type(record) is not DomainRecord:
                record = _parse_entry(table, records, prefix)
            return TagMatch(tag, prefix, record.name), record
        canonical = table.aliases.get(prefix)
        if canonical is not None:
            return _match_alias(table, records, tag, prefix, canonical)
        end = tag.rfind("/", 0, end)
    return None


def _match_alias(
    table: RoutingTable, records: dict[str, Any], tag: str, alias: str, canonical: str
) -> tuple[TagMatch, DomainRecord]:
    rewritten = canonical + tag[len(alias) :]
    end = len(rewritten)
    while end > 0:
        prefix = rewritten[:end]
        record = records.get(prefix, _ABSENT)
        if record is not _ABSENT:
            if type(record) is not DomainRecord:
                record = _parse_entry(table, records, prefix)
            return TagMatch(tag, prefix, record.name, alias=alias), record
        end = rewritten.rfind("/", 0, end)
    raise RoutingError(
        f"Tag {tag!r} uses alias {alias!r} for {canonical!r}, but no domain registers {canonical!r} "
        f"or its parents any more. Point the alias at a registered tag or remove it."
    )


def _parse_entry(table: RoutingTable, records: dict[str, Any], tag: str) -> DomainRecord:
    """Parse the stored entry of registered ``tag``'s domain and return its record.

    Raises KeyError when the entry is None, for a domain missing from the domain index.
    """
    record = table.domains[table.tags[tag]]
    records[tag] = record
    return record


def decide_route(table: RoutingTable, tags: str | Sequence[str]) -> RouteDecision:
    """Return the routing decision for an input carrying ``tags``, by the rules of this module.

    Raises:
        RoutingError: a tag is invalid, no tag matches, two domains tie, or the winning
            domain is retired.
    """
    normalized = _normalize_all(tags)
    matches: list[TagMatch] = []
    ignored: list[str] = []
    matched_records: list[DomainRecord] = []
    records = table.records_by_tag()
    for tag in normalized:
        found = _match(table, records, tag)
        if found is None:
            ignored.append(tag)
        else:
            matches.append(found[0])
            matched_records.append(found[1])
    if not matches:
        raise _no_match_error(table, normalized)

    best = max(match.specificity for match in matches)
    winners = [match for match in matches if match.specificity == best]
    domains = sorted({match.domain for match in winners}) if len(winners) > 1 else [winners[0].domain]
    if len(domains) > 1:
        first, second = domains[:2]
        raise RoutingError(
            f"Tags {list(normalized)} are ambiguous: {_leads_to(winners, first)} and "
            f"{_leads_to(winners, second)} match with the same specificity ({best} segments). "
            "Send only the tag of the intended domain, or a more specific registered tag."
        )

    winner = winners[0]
    record = matched_records[0] if len(matches) == 1 else matched_records[matches.index(winner)]
    if record.state == State.RETIRED.value:
        hint = f"use {record.successor!r} instead" if record.successor else "register a new domain for it"
        raise RoutingError(f"Tag {winner.tag!r} maps to retired domain {record.name!r}; {hint}.")
    return RouteDecision(
        domain=record.name,
        version=record.version,
        state=record.state,
        tags=normalized,
        match=winner,
        ignored=tuple(ignored),
        record=record,
        chain=chain_plan(table, winner.domain) if table.upstream and winner.domain in table.upstream else None,
    )


def chain_plan(table: RoutingTable, domain: str) -> ChainPlan:
    """Return the stages of a request for ``domain``, upstream first, with the table's versions.

    A domain without upstream inputs gives a plan of one stage.

    Raises:
        RoutingError: a domain of the chain is not in the table, or the chain has a cycle.
    """

    def upstream_of(name: str) -> list[UpstreamInput]:
        return _record(table, name, domain).upstream if name in table.upstream else []

    def describe(name: str) -> tuple[int, list[str], str]:
        record = _record(table, name, domain)
        return record.version, record.patches, record.state

    return with_versions(plan_chain(domain, upstream_of), describe)


def _record(table: RoutingTable, name: str, requested: str) -> DomainRecord:
    record = table.domains.get(name)
    if record is None:
        raise RoutingError(
            f"The chain of {requested!r} needs domain {name!r}, which is not in the routing table; register it "
            f"or restore a table version that has it."
        )
    return record


def _normalize_all(tags: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        return (normalize_tag(tags),)
    normalized = tuple(normalize_tag(tag) for tag in tags)
    if not normalized:
        raise RoutingError("An input was routed with an empty list of tags; give at least one tag or none at all.")
    return normalized


def _leads_to(matches: list[TagMatch], domain: str) -> str:
    tags = sorted({match.tag for match in matches if match.domain == domain})
    registered = sorted({match.registered_tag for match in matches if match.domain == domain})
    return f"domain {domain!r} (tag {', '.join(map(repr, tags))} -> {', '.join(map(repr, registered))})"


def _no_match_error(table: RoutingTable, tags: tuple[str, ...]) -> RoutingError:
    subject = f"tag {tags[0]!r} or its parents" if len(tags) == 1 else f"tags {list(tags)} or their parents"
    return RoutingError(
        f"No domain is registered for {subject}; registered tags: {preview(table.tags)}. {UNTAGGED_ADVICE}"
    )


def preview(names: Collection[str], limit: int = PREVIEW_LIMIT) -> str:
    """Return the first ``limit`` names in sorted order as a list literal, with a count of the rest."""
    if not names:
        return "none"
    first_names = heapq.nsmallest(limit, names)
    rest = len(names) - len(first_names)
    return f"{first_names}" + (f" and {rest:,} more" if rest else "")
