"""The history of the routing table: one JSON line per table version, never rewritten.

Entry kinds, named by the ``kind`` key (absent in format-1 entries, which are all
``domain`` entries):

- ``domain``: ``domain``, ``previous`` and ``current`` records. ``current`` is None when a
  restore removed the domain from the table.
- ``alias``: ``alias``, ``previous`` and ``current`` canonical tags (None when absent) and
  ``target_domain``, the domain the alias leads to.
- ``restore``: the table of version ``restored_version`` written again. ``scope`` is
  ``table``, or the name of the one domain restored. ``changes`` lists one
  ``{domain, previous, current}`` per domain that differed, and ``aliases`` contains the
  alias table before and after.

Every entry also has ``version``, ``time`` (the controller's clock, in seconds) and ``reason``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mycelium.routing.table import DomainRecord, RoutingTable, gc_paused, loads, upstream_domains

DOMAIN, ALIAS, RESTORE = "domain", "alias", "restore"


def entry_kind(entry: dict[str, Any]) -> str:
    return entry.get("kind", DOMAIN)


def read_entries(path: Path, *, containing: str | None = None) -> list[dict[str, Any]]:
    """Parse the history file at ``path``, oldest first.

    ``containing`` skips, before parsing, every line in which that text does not occur. It
    is a cheap prefilter for one domain's entries in a long history, so callers must still
    check each parsed entry.
    """
    if not path.exists():
        return []
    with gc_paused():
        entries = []
        with open(path, "rb") as lines:
            needle = containing.encode() if containing is not None else None
            for line in lines:
                if needle is not None and needle not in line:
                    continue
                if line.strip():
                    entries.append(loads(line))
        return entries


def entries_of_domain(entries: Iterable[dict[str, Any]], domain: str) -> list[dict[str, Any]]:
    """Return the ``domain`` entries of ``domain``, with each restore narrowed to its change.

    A narrowed restore entry keeps ``kind: "restore"`` and ``restored_version`` and has the
    ``domain``, ``previous`` and ``current`` keys of a domain entry.
    """
    selected = []
    for entry in entries:
        kind = entry_kind(entry)
        if kind == DOMAIN and entry["domain"] == domain:
            selected.append(entry)
        elif kind == RESTORE:
            for change in entry["changes"]:
                if change["domain"] == domain:
                    selected.append({
                        "version": entry["version"],
                        "time": entry["time"],
                        "kind": RESTORE,
                        "restored_version": entry["restored_version"],
                        **change,
                        "reason": entry["reason"],
                    })
    return selected


def apply_entry(table: RoutingTable, entry: dict[str, Any], *, parse: bool = True) -> None:
    """Apply one history entry to ``table`` in place.

    With ``parse=False`` the records stay the stored dicts until read, which makes replaying
    a long history cheap. The entry's dicts then become part of the table.
    """
    kind = entry_kind(entry)
    if kind == DOMAIN:
        _apply_domain_change(table, entry["domain"], entry.get("previous"), entry["current"], parse=parse)
    elif kind == ALIAS:
        if entry["current"] is None:
            table.aliases.pop(entry["alias"], None)
        else:
            table.aliases[entry["alias"]] = entry["current"]
    elif kind == RESTORE:
        for change in entry["changes"]:
            _apply_domain_change(table, change["domain"], change["previous"], change["current"], parse=parse)
        table.aliases = dict(entry["aliases"]["current"])
    else:
        raise ValueError(f"History entry v{entry['version']} has unknown kind {kind!r}.")
    table.version = entry["version"]


def _apply_domain_change(
    table: RoutingTable, name: str, previous: dict[str, Any] | None, current: dict[str, Any] | None, *, parse: bool
) -> None:
    if previous:
        for tag in previous["tags"]:
            if table.tags.get(tag) == name:
                del table.tags[tag]
    table.upstream.pop(name, None)
    if current is None:
        table.domains.pop(name, None)
        return
    if current.get("upstream"):
        table.upstream[name] = upstream_domains(current["upstream"])
    if parse:
        table.domains[name] = DomainRecord.from_dict(current)
    else:
        table.domains.set_stored(name, current)
    for tag in current["tags"]:
        table.tags[tag] = name


def replay(entries: Iterable[dict[str, Any]], *, until_version: int) -> RoutingTable:
    """Rebuild the table right after change ``until_version`` from history entries."""
    table = RoutingTable()
    for entry in entries:
        if entry["version"] > until_version:
            break
        apply_entry(table, entry, parse=False)
    return table
