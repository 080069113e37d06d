"""Run the upstream stages of a chained request and build the requested domain's input.

The request is a frame whose columns carry slot prefixes. For ``vision/digit-pairs`` with
slots ``a`` and ``b`` from ``vision/digits``, a row has ``a.px_00`` ... ``a.px_63`` and
``b.px_00`` ... ``b.px_63`` (and optionally ``label``). Each stage of the chain plan runs
once, on one batch that stacks the rows of every slot its domain serves. The chain depth
(patches applied) is chosen per slot, because each slot's rows come from one source. The
outputs are renamed with the slot prefix (``a.logit_0`` ...) and become the next stage's input.
The caller serves each stage through a ``StageServer``, so the same code runs in the
runtime (routing, Remembering, validation) and in training (bare subgraphs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mycelium.errors import InputError
from mycelium.routing.chains import ChainNode, ChainPlan, ChainStage, output_columns

if TYPE_CHECKING:
    from mycelium.subgraph import Subgraph

LABEL = "label"


@dataclass
class ServedStage:
    """Result of one stage: outputs per kind (rows x width), the depth per row, and the
    subgraph version and patch chain that served the stage."""

    outputs: dict[str, np.ndarray]
    depth: np.ndarray
    version: int | None
    patches: tuple[str, ...] = ()


# Serves one stage: (stage, stacked input rows, node index of each row) -> ServedStage.
StageServer = Callable[[ChainStage, pd.DataFrame, np.ndarray], ServedStage]


@dataclass
class StageRecord:
    """The domain, subgraph version, patch chain and per-row depth that served one slot.

    ``slot`` is the slot path (``a``, ``a.left``), or ``(requested)`` for the requested domain.
    """

    slot: str
    domain: str
    version: int | None
    patches: tuple[str, ...]
    depth: np.ndarray

    def for_row(self, row: int) -> dict[str, Any]:
        return {"slot": self.slot, "domain": self.domain, "version": self.version,
                "patches": list(self.patches), "depth": int(self.depth[row])}

    def summary(self) -> dict[str, Any]:
        """Return the record for a whole batch, with the number of rows served at each depth."""
        depths, counts = np.unique(self.depth, return_counts=True)
        return {"slot": self.slot, "domain": self.domain, "version": self.version, "patches": list(self.patches),
                "depth_counts": {int(d): int(c) for d, c in zip(depths, counts)}}


@dataclass
class ChainInputs:
    """The requested domain's input, one row per request row, and the upstream stages that made it."""

    frame: pd.DataFrame
    stages: list[StageRecord]


def subgraph_server(subgraph_of: Callable[[str], Subgraph]) -> StageServer:
    """Return a StageServer that runs each stage on ``subgraph_of(domain)`` as it is, with the
    plan's versions: for training and evaluation, which neither validate nor count uses."""

    def serve(stage: ChainStage, rows: pd.DataFrame, groups: np.ndarray) -> ServedStage:
        outputs, depth = subgraph_of(stage.domain).outputs(rows, stage.outputs, groups=groups)
        return ServedStage(outputs, depth, stage.version, stage.patches)

    return serve


def schema_columns(subgraph_of: Callable[[str], Subgraph]) -> Callable[[str], list[str]]:
    """Return a ``columns_of`` function that reads each domain's input columns from its subgraph."""
    return lambda domain: list(subgraph_of(domain).schema.columns)


def request_columns(plan: ChainPlan, columns_of: Callable[[str], list[str]]) -> list[str]:
    """Return the request columns a chained request needs, e.g. ``a.px_00`` ... ``b.px_63``.

    ``columns_of(domain)`` returns the input columns of a domain without upstream inputs.
    """
    return [leaf.prefix + column for leaf in plan.leaves() for column in columns_of(leaf.domain)]


def compute_inputs(
    plan: ChainPlan,
    frame: pd.DataFrame,
    serve: StageServer,
    columns_of: Callable[[str], list[str]],
) -> ChainInputs:
    """Run every upstream stage of ``plan`` on ``frame`` and return the requested domain's input.

    The returned frame has the requested domain's input columns and, when ``frame`` has one,
    the ``label`` column, with a fresh 0..n-1 index.

    Raises:
        InputError: ``frame`` lacks request columns; the message lists them and the format.
    """
    _check_columns(plan, frame, columns_of)
    outputs: dict[tuple[str, ...], pd.DataFrame] = {}
    records: list[StageRecord] = []
    for stage in plan.stages[:-1]:
        inputs = [_node_input(node, frame, outputs, columns_of) for node in stage.nodes]
        groups = np.repeat(np.arange(len(inputs)), [len(part) for part in inputs])
        served = serve(stage, pd.concat(inputs, ignore_index=True), groups)
        start = 0
        for node, part in zip(stage.nodes, inputs):
            rows = slice(start, start + len(part))
            start += len(part)
            values = served.outputs[node.output][rows]
            outputs[node.path] = pd.DataFrame(values, columns=output_columns(node.output, values.shape[1]))
            records.append(StageRecord(node.label, stage.domain, served.version, served.patches, served.depth[rows]))

    root = plan.stages[-1].nodes[0]
    result = _node_input(root, frame, outputs, columns_of)
    if LABEL in frame.columns:
        result[LABEL] = frame[LABEL].to_numpy()
    return ChainInputs(result, records)


def _node_input(
    node: ChainNode,
    frame: pd.DataFrame,
    outputs: dict[tuple[str, ...], pd.DataFrame],
    columns_of: Callable[[str], list[str]],
) -> pd.DataFrame:
    """Return the input rows of ``node``: its upstream outputs with slot prefixes, or its
    request columns with the node's prefix removed."""
    if node.inputs:
        parts = [outputs[(*node.path, item.slot)].add_prefix(item.slot + ".") for item in node.inputs]
        return pd.concat(parts, axis=1)
    columns = columns_of(node.domain)
    values = frame[[node.prefix + column for column in columns]].to_numpy()
    return pd.DataFrame(values, columns=columns)


def _check_columns(plan: ChainPlan, frame: pd.DataFrame, columns_of: Callable[[str], list[str]]) -> None:
    needed = request_columns(plan, columns_of)
    present = set(frame.columns)
    missing = [column for column in needed if column not in present]
    if not missing:
        return
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    slots = ", ".join(f"{leaf.prefix}COLUMN for {leaf.domain!r}" for leaf in plan.leaves())
    raise InputError(
        f"Chained domain {plan.domain!r} is missing request columns {missing[:5]}{more}. A chained request "
        f"carries the input of every upstream slot as prefixed columns ({slots}); add them."
    )
