"""The meta controller: a persistent, versioned mapping from tags to domains and their subgraphs.

It is not a network. Adding an expert or a patch is a mapping update recorded in the history,
so the table of any past version can be rebuilt and any change explained.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from mycelium.errors import RoutingError
from mycelium.routing.lifecycle import State, check_transition
from mycelium.routing.tags import normalize_tag, tag_ancestors

logger = logging.getLogger(__name__)

TABLE_FILE = "routing_table.json"
HISTORY_FILE = "routing_history.jsonl"


@dataclass
class Locality:
    """Temporal locality of one domain, read by the cold-storage sweep."""

    last_used: float | None = None
    uses: int = 0
    # Exponentially decayed count of inputs, with the controller's half-life.
    activity: float = 0.0

    def touch(self, now: float, count: int, half_life_s: float) -> None:
        if self.last_used is not None and now > self.last_used:
            self.activity *= math.pow(0.5, (now - self.last_used) / half_life_s)
        self.activity += count
        self.uses += count
        self.last_used = now if self.last_used is None else max(self.last_used, now)


@dataclass
class DomainRecord:
    """One domain: its tags, lifecycle state, subgraph version and where its weights are."""

    name: str
    tags: list[str]
    state: str = State.TRAINING.value
    version: int = 0
    architecture: str = ""
    n_params: int = 0
    fp32_bytes: int = 0
    # Folder of the hot copy, relative to the controller's folder; None while cold.
    model_dir: str | None = None
    # Name of the newest cold-storage bundle version, e.g. "v0002".
    cold_version: str | None = None
    patches: list[str] = field(default_factory=list)
    # Input columns of the expert, for matching untagged batches without loading weights.
    columns: list[str] = field(default_factory=list)
    pinned: bool = False
    successor: str | None = None
    locality: Locality = field(default_factory=Locality)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DomainRecord":
        values = dict(data)
        values["locality"] = Locality(**values.get("locality", {}))
        return cls(**values)


@dataclass
class RoutingTable:
    """Every domain by name, the tag index, and the table version (one per recorded change)."""

    version: int = 0
    domains: dict[str, DomainRecord] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "domains": {name: asdict(record) for name, record in sorted(self.domains.items())},
            "tags": dict(sorted(self.tags.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutingTable":
        return cls(
            version=int(data["version"]),
            domains={name: DomainRecord.from_dict(value) for name, value in data["domains"].items()},
            tags=dict(data["tags"]),
        )


class MetaController:
    """Reads and changes the routing table in ``directory``.

    Writers take a file lock, reload the newest table, apply their change and replace the
    file atomically, so concurrent flows never lose an update and readers never see a
    half-written table. Use counts are kept in memory and written by ``flush_locality``.
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
        self._pending_uses: dict[str, list[tuple[float, int]]] = {}

    # Reading ---------------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            self._table = self._read()
        return self._table

    def reload(self) -> RoutingTable:
        self._table = self._read()
        return self._table

    def _read(self) -> RoutingTable:
        path = self.directory / TABLE_FILE
        if not path.exists():
            return RoutingTable()
        return RoutingTable.from_dict(json.loads(path.read_text()))

    def domain(self, name: str) -> DomainRecord:
        """Return the record of domain ``name``, or raise RoutingError listing known domains."""
        try:
            return self.table.domains[name]
        except KeyError:
            raise RoutingError(
                f"Unknown domain {name!r}; known domains: {sorted(self.table.domains) or 'none'}. "
                "Register it first or check the name."
            ) from None

    def resolve(self, tag: str) -> DomainRecord:
        """Return the domain of the most specific registered ancestor of ``tag``.

        ``vision/digits/uci`` falls back to ``vision/digits`` and then ``vision``. A retired
        domain is an error that names its successor when it has one.
        """
        for candidate in tag_ancestors(tag):
            name = self.table.tags.get(candidate)
            if name is None:
                continue
            record = self.table.domains[name]
            if record.state == State.RETIRED.value:
                hint = f"use {record.successor!r} instead" if record.successor else "register a new domain for it"
                raise RoutingError(f"Tag {tag!r} maps to retired domain {name!r}; {hint}.")
            return record
        raise RoutingError(
            f"No domain is registered for tag {tag!r} or its parents; registered tags: "
            f"{sorted(self.table.tags) or 'none'}. Send it untagged to route by domain inference."
        )

    def history(self, domain: str | None = None) -> list[dict[str, Any]]:
        """Return recorded changes, oldest first, optionally only those of ``domain``."""
        path = self.directory / HISTORY_FILE
        if not path.exists():
            return []
        changes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [c for c in changes if domain is None or c["domain"] == domain]

    def table_at(self, version: int) -> RoutingTable:
        """Rebuild the table as it was right after change ``version``."""
        table = RoutingTable()
        for change in self.history():
            if change["version"] > version:
                break
            _apply_change(table, change)
        return table

    # Writing ---------------------------------------------------------------------------

    def register(self, record: DomainRecord, *, reason: str) -> DomainRecord:
        """Add a new domain with its tags; every tag must be free."""
        record.tags = [normalize_tag(t) for t in record.tags]

        def change(table: RoutingTable) -> DomainRecord:
            if record.name in table.domains:
                raise RoutingError(f"Domain {record.name!r} already exists; update it instead of registering.")
            for tag in record.tags:
                if tag in table.tags:
                    raise RoutingError(
                        f"Tag {tag!r} already belongs to domain {table.tags[tag]!r}; choose another tag."
                    )
            return record

        return self._commit(record.name, change, reason)

    def update(self, name: str, *, reason: str, **changes: Any) -> DomainRecord:
        """Change fields of domain ``name``; a ``state`` change must be a legal transition."""

        def change(table: RoutingTable) -> DomainRecord:
            if name not in table.domains:
                raise RoutingError(f"Unknown domain {name!r}; register it before updating it.")
            current = table.domains[name]
            if "state" in changes:
                changes["state"] = check_transition(name, current.state, changes["state"]).value
            if "tags" in changes:
                changes["tags"] = [normalize_tag(t) for t in changes["tags"]]
                taken = {t: table.tags[t] for t in changes["tags"] if table.tags.get(t, name) != name}
                if taken:
                    raise RoutingError(
                        f"Tags {taken} already belong to other domains; choose other tags for {name!r}."
                    )
            return replace(current, **changes)

        return self._commit(name, change, reason)

    def set_state(self, name: str, state: State | str, *, reason: str, **changes: Any) -> DomainRecord:
        """Move domain ``name`` to ``state``, checked against the lifecycle's legal transitions."""
        return self.update(name, reason=reason, state=State(state).value, **changes)

    def record_use(self, name: str, count: int = 1, now: float | None = None) -> None:
        """Note that ``count`` inputs went to ``name``; kept in memory until flush_locality."""
        self._pending_uses.setdefault(name, []).append((self.clock() if now is None else now, count))

    def flush_locality(self) -> None:
        """Write the pending use counts in one locked update. Not recorded in the history."""
        if not self._pending_uses:
            return
        pending, self._pending_uses = self._pending_uses, {}
        with self._lock:
            table = self._read()
            for name, uses in pending.items():
                record = table.domains.get(name)
                if record is None:
                    continue
                for now, count in uses:
                    record.locality.touch(now, count, self.activity_half_life_s)
            self._write(table)
            self._table = table

    def _commit(self, name: str, change: Callable[[RoutingTable], DomainRecord], reason: str) -> DomainRecord:
        self.flush_locality()
        with self._lock:
            table = self._read()
            previous = table.domains.get(name)
            record = change(table)
            table.version += 1
            entry = {
                "version": table.version,
                "time": self.clock(),
                "domain": name,
                "reason": reason,
                "previous": asdict(previous) if previous else None,
                "current": asdict(record),
            }
            _apply_change(table, entry)
            self._write(table)
            with open(self.directory / HISTORY_FILE, "a", encoding="utf-8") as history:
                history.write(json.dumps(entry) + "\n")
            self._table = table
        logger.info("Routing table v%d: %s (%s)", table.version, name, reason)
        return record

    def _write(self, table: RoutingTable) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".table-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(table.to_dict(), stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.directory / TABLE_FILE)


def _apply_change(table: RoutingTable, change: dict[str, Any]) -> None:
    """Apply one history entry: replace the domain record and re-index its tags."""
    name = change["domain"]
    previous = change.get("previous")
    if previous:
        for tag in previous["tags"]:
            table.tags.pop(tag, None)
    record = DomainRecord.from_dict(change["current"])
    table.domains[name] = record
    for tag in record.tags:
        table.tags[tag] = name
    table.version = change["version"]
