"""The meta controller: a persistent, versioned mapping from tags to domains and their subgraphs.

It is not a network. Adding an expert or a patch is a mapping update recorded in the history,
so the table of any past version can be rebuilt, shown, restored, and any change explained.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from mycelium.errors import IllegalTransitionError, RoutingError, StorageError
from mycelium.routing.history import (
    ALIAS,
    DOMAIN,
    RESTORE,
    apply_entry,
    entries_of_domain,
    entry_kind,
    read_entries,
    replay,
)
from mycelium.routing.chains import ChainPlan, UpstreamInput, check_acyclic, parse_upstream
from mycelium.routing.lifecycle import State, check_transition
from mycelium.routing.resolution import RouteDecision, chain_plan, decide_route, preview
from mycelium.routing.table import DomainRecord, Locality, RoutingTable, dumps
from mycelium.routing.tags import normalize_tag

logger = logging.getLogger(__name__)

TABLE_FILE = "routing_table.json"
HISTORY_FILE = "routing_history.jsonl"
# Routing decisions kept per input tag (or tuple of tags) until the table changes; the cache is
# emptied when it reaches this size.
DECISION_CACHE_SIZE = 65_536
# A random token that every writer replaces, under the lock, before it replaces the table
# file. While the token is still the one a writer wrote or read, no other writer has written
# since, so that writer builds on its cached table instead of parsing the file again.
STAMP_FILE = "routing_table.stamp"

__all__ = [
    "HISTORY_FILE", "STAMP_FILE", "TABLE_FILE", "DomainRecord", "Locality", "MetaController", "RoutingTable",
]


class MetaController:
    """Reads and changes the routing table in ``directory``.

    Writers take a file lock, start from the newest table, apply their change and replace the
    file atomically, so concurrent flows never lose an update and readers never see a
    half-written table. Use counts are kept in memory and written by ``flush_locality``.

    The table is read once and cached. Records returned by ``table``, ``domain`` and
    ``resolve`` are the cached objects: change them through ``update``, never in place,
    because a later write of this controller saves its cached table.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        activity_half_life_s: float = 3600.0,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.activity_half_life_s = activity_half_life_s
        self._lock = FileLock(str(self.directory / (TABLE_FILE + ".lock")), timeout=60)
        self._table: RoutingTable | None = None
        # The stamp token of the file that self._table was read from or written to, if known.
        self._stamp: str | None = None
        self._pending_uses: dict[str, list[tuple[float, int]]] = {}
        self._decisions: dict[str | tuple[str, ...], RouteDecision] = {}

    # Reading ---------------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            self._decisions.clear()
            self._table = self._read()
        return self._table

    def reload(self) -> RoutingTable:
        self._decisions.clear()
        self._table = self._read()
        self._stamp = None
        return self._table

    def _read(self) -> RoutingTable:
        path = self.directory / TABLE_FILE
        repair = (f"Rebuild it from {HISTORY_FILE} with MetaController({str(self.directory)!r})"
                  ".repair_from_history(), or restore the file from a backup.")
        if not path.exists():
            history = self.directory / HISTORY_FILE
            if history.exists() and history.stat().st_size > 0:
                raise StorageError(f"Routing table {path} is missing, but its history is not empty. {repair}")
            return RoutingTable()
        try:
            return RoutingTable.from_json(path.read_bytes())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"Routing table {path} is not a valid table file ({exc!r}). {repair}") from exc

    def domain(self, name: str) -> DomainRecord:
        """Return the record of domain ``name``, or raise RoutingError listing known domains."""
        try:
            return self.table.domains[name]
        except KeyError:
            raise RoutingError(
                f"Unknown domain {name!r}; known domains: {preview(self.table.domains)}. "
                "Register it first or check the name."
            ) from None

    def resolve(self, tags: str | Sequence[str]) -> DomainRecord:
        """Return the domain that serves an input carrying ``tags`` (one tag or several).

        ``vision/digits/uci`` falls back to ``vision/digits`` and then ``vision``. With
        several tags the most specific registered match wins, and a tie between two domains
        is an error. ``mycelium.routing.resolution`` states the full rules. A retired domain
        is an error that names its successor when it has one.
        """
        return self.explain(tags).record

    def explain(self, tags: str | Sequence[str]) -> RouteDecision:
        """Return the routing decision for ``tags`` with the tag, alias and registered tag used.

        Decisions are cached per input until this controller's table changes, so a repeated
        tag costs one dict lookup however many domains are registered.
        """
        key = tags if isinstance(tags, str) else tuple(tags)
        decision = self._decisions.get(key)
        if decision is None:
            decision = decide_route(self.table, tags)
            if len(self._decisions) >= DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def chain(self, domain: str) -> ChainPlan:
        """Return the stages that serve a request for ``domain``, upstream domains first.

        Each stage names its domain, the slots it serves, the output its consumers read, and
        the version, patches and state that the table records for it now. A domain without
        upstream inputs gives a plan with one stage.
        """
        self.domain(domain)
        return chain_plan(self.table, domain)

    def dependents(self, domain: str) -> list[str]:
        """Return the domains that declare ``domain`` as an upstream input, sorted."""
        return sorted(name for name, upstream in self.table.upstream.items() if domain in upstream)

    def history(self, domain: str | None = None) -> list[dict[str, Any]]:
        """Return recorded changes, oldest first.

        Without ``domain`` every entry is returned as stored (``mycelium.routing.history``
        lists the kinds). With ``domain`` only the changes of that domain's record are
        returned, each with ``domain``, ``previous`` and ``current``. A restore entry is
        narrowed to the change of that domain.
        """
        path = self.directory / HISTORY_FILE
        if domain is None:
            return read_entries(path)
        # Every line that names the domain contains its JSON string, so other lines are skipped
        # unparsed. Older lines escaped non-ASCII characters, so such names are not prefiltered.
        needle = dumps(domain).decode()[1:-1] if domain.isascii() else None
        return entries_of_domain(read_entries(path, containing=needle), domain)

    def table_at(self, version: int) -> RoutingTable:
        """Rebuild the table as it was right after change ``version`` (0: the empty table).

        Locality is written without a history entry, so a rebuilt record carries the
        locality of its last recorded change, not of its last flush.
        """
        return replay(self.history(), until_version=version)

    def version_at_time(self, timestamp: float) -> int:
        """Return the newest table version recorded at or before ``timestamp`` (0 if none).

        Times come from the controller's clock. A clock that went backwards between two
        changes makes the result the newest such version, not the latest in time.
        """
        return max((e["version"] for e in self.history() if e["time"] <= timestamp), default=0)

    def table_at_time(self, timestamp: float) -> RoutingTable:
        """Rebuild the table as it was at ``timestamp``: after every change recorded by then."""
        entries = self.history()
        version = max((e["version"] for e in entries if e["time"] <= timestamp), default=0)
        return replay(entries, until_version=version)

    # Writing ---------------------------------------------------------------------------

    def register(self, record: DomainRecord, *, reason: str) -> DomainRecord:
        """Add a new domain with its tags; every tag must be free and not an alias.

        Its ``upstream`` inputs must name registered, non-retired domains and must not close a
        cycle of the chain graph (ChainCycleError names the cycle).
        """
        record.tags = [normalize_tag(t) for t in record.tags]
        record.upstream = parse_upstream(record.upstream)

        def change(table: RoutingTable) -> dict[str, Any]:
            if record.name in table.domains:
                raise RoutingError(f"Domain {record.name!r} already exists; update it instead of registering.")
            _check_tags_free(table, record.name, record.tags)
            _check_upstream(table, record.name, record.upstream)
            return {"domain": record.name, "previous": None, "current": asdict(record)}

        return self._commit_domain(record.name, change, reason)

    def update(self, name: str, *, reason: str, **changes: Any) -> DomainRecord:
        """Change fields of domain ``name``.

        A ``state`` change must be a legal transition, and a domain that another domain's
        chain takes input from cannot be retired. New ``tags`` must be free, and a tag that an
        alias points to cannot be dropped while the alias exists. New ``upstream`` inputs are
        checked as in ``register``.
        """
        if "tags" in changes:
            changes["tags"] = [normalize_tag(t) for t in changes["tags"]]
        if "upstream" in changes:
            changes["upstream"] = parse_upstream(changes["upstream"])

        def change(table: RoutingTable) -> dict[str, Any]:
            if name not in table.domains:
                raise RoutingError(f"Unknown domain {name!r}; register it before updating it.")
            current = table.domains[name]
            if "state" in changes:
                changes["state"] = check_transition(name, current.state, changes["state"]).value
                _check_retirable(table, name, changes["state"])
            if "tags" in changes:
                _check_tags_free(table, name, changes["tags"])
                _check_aliases_kept(table, name, changes["tags"])
            if "upstream" in changes:
                _check_upstream(table, name, changes["upstream"])
            return {"domain": name, "previous": asdict(current), "current": asdict(replace(current, **changes))}

        return self._commit_domain(name, change, reason)

    def set_state(self, name: str, state: State | str, *, reason: str, **changes: Any) -> DomainRecord:
        """Move domain ``name`` to ``state``, checked against the lifecycle's legal transitions."""
        return self.update(name, reason=reason, state=State(state).value, **changes)

    def add_alias(self, alias: str, canonical: str, *, reason: str) -> None:
        """Make tag ``alias`` (and its children) route as the registered tag ``canonical``.

        ``images/digits/uci`` then routes as ``vision/digits/uci`` when ``images/digits`` is
        an alias of ``vision/digits``. Pointing an existing alias elsewhere is a recorded
        change too.
        """
        alias, canonical = normalize_tag(alias), normalize_tag(canonical)

        def change(table: RoutingTable) -> dict[str, Any] | None:
            if alias in table.tags:
                raise RoutingError(
                    f"{alias!r} is a registered tag of domain {table.tags[alias]!r}, so it cannot be an alias; "
                    "choose another alias."
                )
            if canonical not in table.tags:
                hint = f" It is itself an alias of {table.aliases[canonical]!r}; use that tag." if canonical in table.aliases else ""
                raise RoutingError(
                    f"Alias {alias!r} must point at a registered tag, and {canonical!r} is not one.{hint} "
                    f"Registered tags: {preview(table.tags)}."
                )
            previous = table.aliases.get(alias)
            if previous == canonical:
                return None
            return {"kind": ALIAS, "alias": alias, "previous": previous, "current": canonical,
                    "target_domain": table.tags[canonical]}

        self._commit(change, reason)

    def remove_alias(self, alias: str, *, reason: str) -> None:
        """Remove alias ``alias``; inputs tagged with it then route by their own tag."""
        alias = normalize_tag(alias)

        def change(table: RoutingTable) -> dict[str, Any]:
            if alias not in table.aliases:
                raise RoutingError(f"{alias!r} is not an alias; aliases: {preview(table.aliases)}.")
            previous = table.aliases[alias]
            return {"kind": ALIAS, "alias": alias, "previous": previous, "current": None,
                    "target_domain": table.tags.get(previous)}

        self._commit(change, reason)

    def restore(self, version: int, reason: str, *, domain: str | None = None) -> RoutingTable:
        """Write the table of ``version`` again as a new version; the history is only appended to.

        Every domain record and the alias table become what they were right after change
        ``version``, except that each domain keeps its current locality (last use, use
        count, activity). A domain registered after ``version`` leaves the table, but its
        history stays, so restoring a later version brings it back. With ``domain`` only
        that domain's record is restored and the rest of the table is left as it is.

        Raises:
            RoutingError: ``version`` is not a recorded version, ``domain`` did not exist at
                ``version``, or a restored tag now belongs to another domain.
            IllegalTransitionError: a restored state cannot follow the current one, for
                example ``hot`` while the domain is ``cold``: remember it first.
        """

        def change(table: RoutingTable) -> dict[str, Any]:
            if not isinstance(version, int) or not 0 <= version <= table.version:
                raise RoutingError(
                    f"Table version {version!r} does not exist; recorded versions are 0 to {table.version}. "
                    "List them with `mycelium history DOMAIN`."
                )
            entries = self.history()
            past = replay(entries, until_version=version)
            if domain is None:
                names = _domains_changed_after(entries, version)
            elif domain not in past.domains and domain not in table.domains and not entries_of_domain(entries, domain):
                raise RoutingError(
                    f"Unknown domain {domain!r}: it is in no version of the routing table; known domains: "
                    f"{preview(table.domains)}."
                )
            elif domain not in past.domains:
                raise RoutingError(
                    f"Domain {domain!r} did not exist at table version {version}; choose a version at or "
                    "after its registration (see `mycelium history DOMAIN`)."
                )
            else:
                names = [domain]
            changes = [c for name in names if (c := _restore_change(table, past, name, version)) is not None]
            aliases = dict(past.aliases) if domain is None else dict(table.aliases)
            if domain is not None:
                restored = past.domains[domain]
                _check_tags_free(table, domain, restored.tags)
                _check_aliases_kept(table, domain, restored.tags)
                _check_upstream(table, domain, restored.upstream)
                _check_retirable(table, domain, restored.state)
            removed = [c["domain"] for c in changes if c["current"] is None]
            if removed:
                logger.warning("Restoring table v%d removes domains registered later: %s", version, removed)
            return {"kind": RESTORE, "restored_version": version, "scope": domain or "table",
                    "changes": changes, "aliases": {"previous": dict(table.aliases), "current": aliases}}

        return self._commit(change, reason)

    def repair_from_history(self) -> RoutingTable:
        """Rewrite a missing or corrupt table file as the table of the newest recorded version.

        Nothing is added to the history. Each record gets the locality of its last recorded
        change, because locality flushes are not in the history.
        """
        with self._lock:
            self._forget_cache()
            entries = self.history()
            table = replay(entries, until_version=entries[-1]["version"] if entries else 0)
            self._write(table)
        logger.warning("Routing table rebuilt from %d history entries at version %d.", len(entries), table.version)
        return table

    def record_use(self, name: str, count: int = 1, now: float | None = None) -> None:
        """Note that ``count`` inputs went to ``name``; kept in memory until flush_locality."""
        self._pending_uses.setdefault(name, []).append((self.clock() if now is None else now, count))

    def flush_locality(self) -> None:
        """Write the pending use counts in one locked update. Not recorded in the history."""
        if not self._pending_uses:
            return
        pending, self._pending_uses = self._pending_uses, {}
        with self._lock:
            try:
                table = self._locked_table()
                for name, uses in pending.items():
                    if name not in table.domains:
                        continue
                    # A new record, so records handed out earlier stay as they were.
                    record = table.domains[name]
                    locality = replace(record.locality)
                    for now, count in uses:
                        locality.touch(now, count, self.activity_half_life_s)
                    table.domains[name] = replace(record, locality=locality)
                self._write(table)
            except BaseException:
                self._forget_cache()
                raise

    def _commit_domain(self, name: str, change: Callable[[RoutingTable], dict[str, Any]], reason: str) -> DomainRecord:
        table = self._commit(change, reason)
        return table.domains[name]

    def _commit(self, change: Callable[[RoutingTable], dict[str, Any] | None], reason: str) -> RoutingTable:
        """Apply one recorded change under the lock: ``change`` returns the entry's body, or
        None when there is nothing to change."""
        self.flush_locality()
        with self._lock:
            try:
                table = self._locked_table()
                body = change(table)
                if body is None:
                    return table
                entry = {"version": table.version + 1, "time": self.clock(), **body, "reason": reason}
                apply_entry(table, entry)
                self._write(table)
                with open(self.directory / HISTORY_FILE, "ab") as history:
                    history.write(dumps(entry) + b"\n")
            except BaseException:
                self._forget_cache()
                raise
        logger.info("Routing table v%d: %s (%s)", table.version, _subject(entry), reason)
        return table

    def _locked_table(self) -> RoutingTable:
        """Return the newest table. Call it with the lock held."""
        stamp_path = self.directory / STAMP_FILE
        stamp = stamp_path.read_text() if stamp_path.exists() else None
        if self._table is None or stamp is None or stamp != self._stamp:
            self._decisions.clear()
            self._table = self._read()
            self._stamp = stamp
        return self._table

    def _forget_cache(self) -> None:
        self._decisions.clear()
        self._table = None
        self._stamp = None

    def _write(self, table: RoutingTable) -> None:
        # The stamp changes first: a crash between the two writes leaves a new stamp beside
        # the old table, which makes every other writer read the file again.
        stamp = uuid.uuid4().hex
        (self.directory / STAMP_FILE).write_text(stamp)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".table-", suffix=".json")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(table.to_json())
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.directory / TABLE_FILE)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._decisions.clear()
        self._table = table
        self._stamp = stamp


def _check_tags_free(table: RoutingTable, name: str, tags: list[str]) -> None:
    for tag in tags:
        owner = table.tags.get(tag)
        if owner is not None and owner != name:
            raise RoutingError(f"Tag {tag!r} already belongs to domain {owner!r}; choose another tag.")
        if tag in table.aliases:
            raise RoutingError(
                f"Tag {tag!r} is an alias of {table.aliases[tag]!r}; choose another tag or remove the alias first."
            )


def _check_upstream(table: RoutingTable, name: str, inputs: list[UpstreamInput]) -> None:
    """Raise if an upstream input of ``name`` is unknown or retired, or closes a cycle."""
    for item in inputs:
        upstream = table.domains.get(item.domain)
        if upstream is None:
            raise RoutingError(
                f"Domain {name!r} declares slot {item.slot!r} from unknown domain {item.domain!r}; known domains: "
                f"{preview(table.domains)}. Register {item.domain!r} first, or fix the name."
            )
        if upstream.state == State.RETIRED.value:
            hint = f"use its successor {upstream.successor!r}" if upstream.successor else "choose a domain in service"
            raise RoutingError(
                f"Domain {name!r} declares slot {item.slot!r} from {item.domain!r}, which is retired; {hint}."
            )
    check_acyclic(table.upstream, name, inputs)


def _check_retirable(table: RoutingTable, name: str, state: str) -> None:
    """Raise if ``name`` would become retired while a domain in service takes input from it."""
    if state != State.RETIRED.value:
        return
    dependents = sorted(
        other for other, upstream in table.upstream.items()
        if name in upstream and other != name and table.domains[other].state != State.RETIRED.value
    )
    if dependents:
        raise RoutingError(
            f"Domain {name!r} feeds the chains of {dependents}, so it cannot be retired; give them other upstream "
            f"inputs (update their 'upstream') or retire them first."
        )


def _check_aliases_kept(table: RoutingTable, name: str, tags: list[str]) -> None:
    """Raise if domain ``name`` would drop a tag that an alias points to."""
    if name not in table.domains:
        return
    dropped = set(table.domains[name].tags) - set(tags)
    for alias, canonical in table.aliases.items():
        if canonical in dropped:
            raise RoutingError(
                f"Domain {name!r} would drop tag {canonical!r}, which alias {alias!r} points to; "
                f"remove or repoint the alias first."
            )


def _domains_changed_after(entries: list[dict[str, Any]], version: int) -> list[str]:
    names: set[str] = set()
    for entry in entries:
        if entry["version"] <= version:
            continue
        kind = entry_kind(entry)
        if kind == DOMAIN:
            names.add(entry["domain"])
        elif kind == RESTORE:
            names.update(change["domain"] for change in entry["changes"])
    return sorted(names)


def _restore_change(table: RoutingTable, past: RoutingTable, name: str, version: int) -> dict[str, Any] | None:
    """Return the change that gives ``name`` its record of ``past``, or None if it has it already."""
    now = table.domains.get(name)
    then = past.domains.get(name)
    if then is None:
        return None if now is None else {"domain": name, "previous": asdict(now), "current": None}
    if now is not None:
        then = replace(then, locality=replace(now.locality))
        if now.state != then.state:
            try:
                check_transition(name, now.state, then.state)
            except IllegalTransitionError as exc:
                raise IllegalTransitionError(
                    f"Cannot restore table version {version}: {exc} Bring the domain to {then.state!r} "
                    "first, or restore a version in which it was already in a state it can reach."
                ) from exc
    current = asdict(then)
    previous = asdict(now) if now is not None else None
    return None if current == previous else {"domain": name, "previous": previous, "current": current}


def _subject(entry: dict[str, Any]) -> str:
    kind = entry_kind(entry)
    if kind == ALIAS:
        return f"alias {entry['alias']} -> {entry['current']}"
    if kind == RESTORE:
        return f"restored v{entry['restored_version']} ({len(entry['changes'])} domains changed)"
    return str(entry["domain"])
