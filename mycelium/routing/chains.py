"""Cross-domain chains: a domain whose input is the output of other domains' experts.

A domain declares its upstream inputs as named slots. The slot ``a`` with upstream domain
``vision/digits`` and output ``logits`` means that the request columns prefixed ``a.`` (for
example ``a.px_00``) are served by ``vision/digits``, and that expert's logits become the
input columns ``a.logit_0`` ... of the declaring domain. An upstream domain may itself be
chained, so prefixes nest (``a.left.px_00``).

The declarations form a directed acyclic graph: registering or updating a domain with an
input that would close a cycle raises ``ChainCycleError`` naming the cycle. A chained
request runs every domain of its chain once, in topological order, on one tensor batch that
stacks the rows of every slot that domain serves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from graphlib import CycleError, TopologicalSorter
from typing import Any

from mycelium.errors import ChainCycleError, RoutingError

LOGITS, EMBEDDING = "logits", "embedding"
OUTPUT_KINDS = (LOGITS, EMBEDDING)
# Name prefix of upstream output columns. The logits of ``vision/digits`` in slot ``a`` are
# ``a.logit_0`` to ``a.logit_9``, and its penultimate embedding is ``a.embedding_0`` onwards.
OUTPUT_COLUMN_PREFIX = {LOGITS: "logit_", EMBEDDING: "embedding_"}
SLOT_SEPARATOR = "."

_SLOT_PATTERN = re.compile(r"^[a-z0-9_-]+$")


@dataclass(frozen=True)
class UpstreamInput:
    """One declared input of a domain: slot ``slot`` receives ``domain``'s ``output``."""

    slot: str
    domain: str
    output: str = LOGITS

    def __post_init__(self) -> None:
        if not isinstance(self.slot, str) or not _SLOT_PATTERN.match(self.slot):
            raise RoutingError(
                f"Invalid upstream slot {self.slot!r}: use lower-case letters, digits, '_' or '-', such as 'a' "
                f"or 'left'. The slot prefixes the request columns ('a.px_00'), so it cannot contain "
                f"{SLOT_SEPARATOR!r}."
            )
        if self.output not in OUTPUT_KINDS:
            raise RoutingError(
                f"Upstream slot {self.slot!r} asks for output {self.output!r} of {self.domain!r}; "
                f"choose one of {list(OUTPUT_KINDS)}."
            )

    @classmethod
    def parse(cls, value: "UpstreamInput | Mapping[str, Any]") -> "UpstreamInput":
        if isinstance(value, UpstreamInput):
            return value
        unknown = sorted(set(value) - {"slot", "domain", "output"})
        if unknown or "slot" not in value or "domain" not in value:
            raise RoutingError(
                f"Upstream input {dict(value)!r} is invalid: give 'slot', 'domain' and optionally 'output' "
                f"({' or '.join(OUTPUT_KINDS)}), e.g. {{'slot': 'a', 'domain': 'vision/digits', 'output': 'logits'}}."
            )
        return cls(**value)


def parse_upstream(values: Iterable[UpstreamInput | Mapping[str, Any]]) -> list[UpstreamInput]:
    """Return the declared inputs as UpstreamInput objects; slot names must be distinct."""
    inputs = [UpstreamInput.parse(value) for value in values]
    slots = [item.slot for item in inputs]
    repeated = sorted({slot for slot in slots if slots.count(slot) > 1})
    if repeated:
        raise RoutingError(f"Upstream slots {repeated} are declared twice; give every slot its own name.")
    return inputs


def find_cycle(upstream_of: Mapping[str, Sequence[str]], name: str, new_upstream: Sequence[str]) -> list[str] | None:
    """Return the cycle that giving ``name`` the upstream domains ``new_upstream`` would close.

    ``upstream_of`` maps each domain to its upstream domains and is acyclic. The cycle is in
    data-flow order, e.g. ``['a', 'b', 'a']`` when ``a`` feeds ``b`` and ``b`` would feed ``a``.
    """
    for start in new_upstream:
        # A path start <- ... <- name along upstream edges means name feeds start.
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            if node == name:
                return [*reversed(path), name]
            if node in seen:
                continue
            seen.add(node)
            stack.extend((parent, [*path, parent]) for parent in upstream_of.get(node, ()))
    return None


def cycle_text(cycle: Sequence[str]) -> str:
    return " -> ".join(cycle)


def check_acyclic(upstream_of: Mapping[str, Sequence[str]], name: str, inputs: Sequence[UpstreamInput]) -> None:
    """Raise ChainCycleError if ``name`` taking ``inputs`` would close a cycle."""
    cycle = find_cycle(upstream_of, name, [item.domain for item in inputs])
    if cycle is None:
        return
    closing = next(item for item in inputs if item.domain == cycle[-2])
    raise ChainCycleError(
        f"Domain {name!r} cannot take slot {closing.slot!r} from {closing.domain!r}: the chain would contain the "
        f"cycle {cycle_text(cycle)} (each arrow: output feeds input). Drop that input, or remove the input that "
        f"makes {name!r} feed {closing.domain!r} first.",
        cycle,
    )


@dataclass(frozen=True)
class ChainNode:
    """One place of a domain in a chained request.

    ``path`` is the slot path from the requested domain: ``()`` for the requested domain
    itself, ``('a',)`` for the domain in its slot ``a``. ``output`` is what the parent reads
    (None for the requested domain), and ``inputs`` are this domain's own upstream inputs.
    """

    path: tuple[str, ...]
    domain: str
    output: str | None
    inputs: tuple[UpstreamInput, ...] = ()

    @property
    def prefix(self) -> str:
        """Column prefix of this node's request columns: ``''``, ``'a.'`` or ``'a.left.'``."""
        return "".join(slot + SLOT_SEPARATOR for slot in self.path)

    @property
    def label(self) -> str:
        return SLOT_SEPARATOR.join(self.path) if self.path else "(requested)"


@dataclass(frozen=True)
class ChainStage:
    """One domain of a chain with every node it serves, run as one tensor batch.

    ``version``, ``patches`` and ``state`` are the routing table's values when the plan was made.
    """

    domain: str
    nodes: tuple[ChainNode, ...]
    version: int | None = None
    patches: tuple[str, ...] = ()
    state: str | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The output kinds that the nodes' parents read, in a fixed order."""
        return tuple(kind for kind in OUTPUT_KINDS if any(node.output == kind for node in self.nodes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "version": self.version,
            "patches": list(self.patches),
            "state": self.state,
            "slots": [node.label for node in self.nodes],
            "outputs": list(self.outputs),
        }


@dataclass(frozen=True)
class ChainPlan:
    """The stages of a request for ``domain`` in the order they run; the last one is ``domain``."""

    domain: str
    stages: tuple[ChainStage, ...] = field(default_factory=tuple)

    @property
    def is_chained(self) -> bool:
        return len(self.stages) > 1

    def leaves(self) -> list[ChainNode]:
        """Return the nodes whose domain has no upstream input: they read request columns."""
        return [node for stage in self.stages for node in stage.nodes if not node.inputs]

    def describe(self) -> str:
        """Return one line such as ``vision/digits v3 +1 patches [a, b -> logits] -> vision/digit-pairs v1``."""
        parts = []
        for stage in self.stages:
            version = f" v{stage.version}" if stage.version is not None else ""
            depth = f" +{len(stage.patches)} patches" if stage.patches else ""
            slots = [node.label for node in stage.nodes if node.path]
            where = f" [{', '.join(slots)} -> {'/'.join(stage.outputs)}]" if slots else ""
            parts.append(f"{stage.domain}{version}{depth}{where}")
        return " -> ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "stages": [stage.to_dict() for stage in self.stages]}


def plan_chain(domain: str, upstream_of: Callable[[str], Sequence[UpstreamInput]]) -> ChainPlan:
    """Return the stages of a request for ``domain``, upstream domains first.

    ``upstream_of(name)`` returns the declared inputs of ``name``. Every domain in the chain
    appears in one stage, whichever slots it serves.

    Raises:
        ChainCycleError: the declarations contain a cycle (a table edited by hand).
    """
    nodes: dict[str, list[ChainNode]] = {}
    graph: dict[str, set[str]] = {}
    pending = [ChainNode((), domain, None, tuple(upstream_of(domain)))]
    while pending:
        node = pending.pop()
        nodes.setdefault(node.domain, []).append(node)
        graph.setdefault(node.domain, set()).update(item.domain for item in node.inputs)
        if len(node.path) > len(graph):
            # Deeper than the number of distinct domains: some domain repeats along this path.
            raise _cycle_in_path(node)
        for item in node.inputs:
            pending.append(ChainNode((*node.path, item.slot), item.domain, item.output, tuple(upstream_of(item.domain))))
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = list(reversed(exc.args[1]))
        raise ChainCycleError(
            f"The chain of {domain!r} contains the cycle {cycle_text(cycle)}; remove one of these upstream inputs.",
            cycle,
        ) from None
    stages = tuple(
        ChainStage(name, tuple(sorted(nodes[name], key=lambda node: node.path))) for name in order
    )
    return ChainPlan(domain, stages)


def _cycle_in_path(node: ChainNode) -> ChainCycleError:
    return ChainCycleError(
        f"The chain reaches {node.domain!r} through slots {list(node.path)}, which repeats a domain; the upstream "
        "declarations contain a cycle. Remove one of these upstream inputs.",
        [node.domain],
    )


def with_versions(plan: ChainPlan, describe: Callable[[str], tuple[int, Sequence[str], str]]) -> ChainPlan:
    """Return ``plan`` with each stage's version, patches and state from ``describe(domain)``."""
    stages = []
    for stage in plan.stages:
        version, patches, state = describe(stage.domain)
        stages.append(replace(stage, version=version, patches=tuple(patches), state=state))
    return replace(plan, stages=tuple(stages))


def output_columns(kind: str, width: int) -> list[str]:
    """Return the column names of ``width`` outputs of ``kind``: ``logit_0`` ... ``logit_9``."""
    return [f"{OUTPUT_COLUMN_PREFIX[kind]}{index}" for index in range(width)]
