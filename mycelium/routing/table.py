"""The routing table: domain records, the tag and alias indexes, and the table's JSON format.

The file is compact JSON written with orjson. Each record is a JSON object with the fields of
DomainRecord, except that its input columns are stored once per distinct column list in the
top-level ``schemas`` list and the record stores its index as ``schema``. The top-level
``upstream`` object maps each chained domain to the domains whose outputs it takes, so the
chain graph is checked without parsing every record. A record is parsed into
a DomainRecord only when it is first read, so loading a table of 100,000 domains costs one
JSON parse and a route decision touches one record (``python benchmarks/routing.py``
measures both).
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from mycelium.errors import StorageError
from mycelium.routing.chains import UpstreamInput
from mycelium.routing.lifecycle import State

# Format 1 had no "format_version", "aliases" or "schemas" keys and stored each record's
# columns inline. Format 2 adds the three keys; a format-2 reader accepts inline columns too.
# Format 3 adds the records' "upstream" inputs and the top-level "upstream" index.
FORMAT_VERSION = 3
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


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
    """One domain: its tags, lifecycle state, subgraph version and where its weights are.

    Parsed records share one interned string per state, so the retired check of a route
    decision compares it without reading another object from memory.
    """

    name: str
    tags: list[str]
    state: str = State.TRAINING.value
    version: int = 0
    architecture: str = ""
    n_params: int = 0
    fp32_bytes: int = 0
    # Folder of the hot copy, relative to the run folder (the parent of the controller's
    # folder); None while cold.
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
    # Declared inputs from other domains' experts; empty for a domain that reads its request.
    upstream: list[UpstreamInput] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DomainRecord":
        values = dict(data)
        values["state"] = sys.intern(values.get("state", State.TRAINING.value))
        values["locality"] = Locality(**values.get("locality", {}))
        values["upstream"] = [UpstreamInput.parse(item) for item in values.get("upstream", ())]
        return cls(**values)


class TagIndex(dict[str, str]):
    """Registered tag -> domain name, a dict that counts its changes in ``generation``.

    RoutingTable compares the count to know when its tag -> record lookup is stale.
    """

    __slots__ = ("generation",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.generation = 0

    def __setitem__(self, tag: str, domain: str) -> None:
        super().__setitem__(tag, domain)
        self.generation += 1

    def __delitem__(self, tag: str) -> None:
        super().__delitem__(tag)
        self.generation += 1

    def __reduce__(self) -> tuple[type["TagIndex"], tuple[dict[str, str]]]:
        # Copies start from the plain mapping; dict's default would call __setitem__ before __init__.
        return type(self), (dict(self),)

    def __ior__(self, other: Any) -> "TagIndex":
        self.update(other)
        return self

    def pop(self, *args: Any) -> Any:
        self.generation += 1
        return super().pop(*args)

    def popitem(self) -> tuple[str, str]:
        self.generation += 1
        return super().popitem()

    def setdefault(self, tag: str, domain: str) -> str:  # type: ignore[override]
        self.generation += 1
        return super().setdefault(tag, domain)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.generation += 1
        super().update(*args, **kwargs)

    def clear(self) -> None:
        self.generation += 1
        super().clear()


class DomainIndex(MutableMapping[str, DomainRecord]):
    """Domain records by name, each parsed from its stored dict on first access.

    Values are DomainRecord objects to every caller. Internally an entry stays the dict that
    JSON parsing produced until someone reads it, which keeps loading and saving large tables
    fast: an untouched entry is written back as it was read. ``schemas`` are the column lists
    that stored entries refer to by their ``schema`` index. ``generation`` counts the entries
    set or deleted (parsing an entry on first access is not a change).
    """

    __slots__ = ("_entries", "_schemas", "generation")

    def __init__(
        self,
        entries: Mapping[str, DomainRecord | dict[str, Any]] | None = None,
        schemas: list[list[str]] | None = None,
    ):
        self._entries: dict[str, DomainRecord | dict[str, Any]] = dict(entries or {})
        self._schemas: list[list[str]] = list(schemas or [])
        self.generation = 0

    def __getitem__(self, name: str) -> DomainRecord:
        entry = self._entries[name]
        if isinstance(entry, dict):
            entry = self._parse(entry)
            self._entries[name] = entry
        return entry

    def __setitem__(self, name: str, record: DomainRecord) -> None:
        self._entries[name] = record
        self.generation += 1

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        self.generation += 1

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DomainIndex({len(self._entries)} domains)"

    def set_stored(self, name: str, data: dict[str, Any]) -> None:
        """Set the entry of ``name`` to a record dict with inline ``columns``, without parsing it."""
        self._entries[name] = data
        self.generation += 1

    def entries_by_tag(self, tags: Mapping[str, str]) -> dict[str, DomainRecord | dict[str, Any] | None]:
        """Return each tag's domain entry as held: a DomainRecord, a stored dict not parsed yet, or
        None for a domain that is not in the index."""
        entries = self._entries
        return {tag: entries.get(name) for tag, name in tags.items()}

    def _parse(self, data: dict[str, Any]) -> DomainRecord:
        if "schema" in data:
            data = dict(data)
            data["columns"] = list(self._schemas[data.pop("schema")])
        return DomainRecord.from_dict(data)

    def stored(self) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
        """Return the entries in their stored form, and the schemas they refer to.

        The schemas are renumbered in order of first use, so a schema that no record uses any
        more is dropped. Stored dicts held by the index are renumbered in place.
        """
        schemas: list[list[str]] = []
        numbers: dict[tuple[str, ...], int] = {}
        renumbered: dict[int, int] = {}

        def number(columns: tuple[str, ...]) -> int:
            if columns not in numbers:
                numbers[columns] = len(schemas)
                schemas.append(list(columns))
            return numbers[columns]

        entries: dict[str, dict[str, Any]] = {}
        for name, entry in self._entries.items():
            if isinstance(entry, DomainRecord):
                # A dataclass's __dict__ contains exactly its fields, and copying it is the fastest way.
                stored = dict(entry.__dict__)
                stored["schema"] = number(tuple(stored.pop("columns")))
            elif "schema" in entry:
                old = entry["schema"]
                if old not in renumbered:
                    renumbered[old] = number(tuple(self._schemas[old]))
                entry["schema"] = renumbered[old]
                stored = entry
            else:
                stored = dict(entry)
                stored["schema"] = number(tuple(stored.pop("columns", ())))
            entries[name] = stored
        self._schemas = schemas
        return entries, schemas


@dataclass
class RoutingTable:
    """Every domain by name, the tag and alias indexes, and the table version.

    ``tags`` maps each registered tag to its domain. ``aliases`` maps an alias tag to the
    registered tag it stands for. ``upstream`` maps each chained domain to the distinct
    domains named by its upstream inputs. ``version`` counts recorded changes. A ``domains``
    or ``tags`` value of another mapping type is copied into a DomainIndex or TagIndex.
    """

    version: int = 0
    domains: DomainIndex = field(default_factory=DomainIndex)
    tags: TagIndex = field(default_factory=TagIndex)
    aliases: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, list[str]] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "domains" and not isinstance(value, DomainIndex):
            value = DomainIndex(value)
        elif name == "tags" and not isinstance(value, TagIndex):
            value = TagIndex(value)
        if name in ("domains", "tags"):
            # A new index object may have any generation count, so the lookup is rebuilt.
            object.__setattr__(self, "_records_generation", -1)
        object.__setattr__(self, name, value)

    def records_by_tag(self) -> dict[str, DomainRecord | dict[str, Any] | None]:
        """Return each registered tag's domain entry, rebuilt when ``tags`` or ``domains`` changed.

        Route decisions reach a record with one lookup in it instead of two (tag -> name ->
        record); at 100,000 domains each lookup is mostly CPU cache misses. A value is the
        domain index's entry as held, so a record not parsed yet is a stored dict and a tag
        whose domain is missing has None: read those through ``domains[tags[tag]]``. The
        counts of both indexes only grow, so an unchanged sum means that neither changed.
        A rebuild reads every tag: about 65 ms for the 200,000 tags of 100,000 domains on the
        routing benchmark's machine, paid by the first decision after each table write.
        """
        generation = self.tags.generation + self.domains.generation
        if generation != self._records_generation:
            self._records = self.domains.entries_by_tag(self.tags)
            self._records_generation = generation
        return self._records

    def to_json(self) -> bytes:
        """Return the table as the compact JSON document that the table file contains."""
        with gc_paused():
            domains, schemas = self.domains.stored()
            document = {
                "format_version": FORMAT_VERSION,
                "version": self.version,
                "domains": domains,
                "schemas": schemas,
                "tags": self.tags,
                "aliases": self.aliases,
                "upstream": self.upstream,
            }
            return orjson.dumps(document, option=_JSON_OPTIONS)

    def to_dict(self) -> dict[str, Any]:
        """Return a deep copy of the table as plain JSON values, equal to the parsed file."""
        return orjson.loads(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutingTable":
        """Build a table from a parsed table file of format 1 to 3 (records parsed lazily)."""
        found = data.get("format_version", 1)
        if not isinstance(found, int) or not 1 <= found <= FORMAT_VERSION:
            raise StorageError(
                f"Routing table has format_version {found!r}, but this Mycelium reads formats 1 to "
                f"{FORMAT_VERSION}; upgrade Mycelium to read it."
            )
        domains = data["domains"]
        # The tag index refers to each domain by the string object that keys the domain index.
        # A route decision's record lookup then matches the key by identity and skips reading a
        # second copy of the name from memory.
        names = {name: name for name in domains}
        return cls(
            version=int(data["version"]),
            domains=DomainIndex(domains, data.get("schemas")),
            tags=TagIndex({tag: names.get(domain, domain) for tag, domain in data["tags"].items()}),
            aliases=dict(data.get("aliases", {})),
            upstream={name: list(domains) for name, domains in data.get("upstream", {}).items()},
        )

    @classmethod
    def from_json(cls, text: bytes | str) -> "RoutingTable":
        """Parse a table file's content.

        The cyclic garbage collector is paused while parsing, as in ``to_json``: the hundreds
        of thousands of containers of a large table would otherwise trigger repeated full
        collections, which made a load of 100,000 domains about 4 times slower.
        """
        with gc_paused():
            return cls.from_dict(orjson.loads(text))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector inside the block, then restore its previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def upstream_domains(inputs: list[UpstreamInput] | list[dict[str, Any]]) -> list[str]:
    """Return the distinct domains named by ``inputs`` (objects or stored dicts), in order."""
    names = [item.domain if isinstance(item, UpstreamInput) else item["domain"] for item in inputs]
    return list(dict.fromkeys(names))


def dumps(value: Any) -> bytes:
    """Return ``value`` as compact JSON; dataclasses and NumPy values are converted."""
    return orjson.dumps(value, option=_JSON_OPTIONS)


def loads(text: bytes | str) -> Any:
    return orjson.loads(text)
