"""Batch routing: split a batch of mixed tags by domain, predict each domain's rows as one tensor
batch on its subgraph, and return the results in input order.

A row's tags come from a ``tag`` column or from a list beside the frame. A cell contains one tag,
several tags separated by commas (tags cannot contain commas), or a list of tags; several tags
are resolved by ``mycelium.routing.resolution``. Untagged rows are grouped by the columns they
fill, and each group is routed by ``Mycelium.infer_domain`` as one batch, as ``ingest`` routes
an untagged batch. Rows that no domain accepts get no prediction, and the reason is in their
``route``; they are quarantined, not put in the new-domain queue.

Rows of a chained domain carry the input of each upstream slot as prefixed columns
(``a.px_00``, ``b.px_00``; see ``mycelium.routing.chained``). Every upstream stage runs as one
batch, and each row's ``stages`` records the domain, version, patches and depth of every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mycelium.errors import DataValidationError, EmptyDataError, InputError, MyceliumError, RoutingError, one_line
from mycelium.experts.fitting import LABEL
from mycelium.routing.chained import ChainInputs, ServedStage, StageRecord, compute_inputs, request_columns
from mycelium.routing.chains import ChainPlan, ChainStage
from mycelium.routing.lifecycle import State
from mycelium.validation.expectations import require_valid, spec_columns
from mycelium.validation.finite import non_finite_columns
from mycelium.validation.quarantine import holds_rows, quarantine_batch

if TYPE_CHECKING:
    from mycelium.cold_storage.remembering import RememberResult
    from mycelium.system import Mycelium

logger = logging.getLogger(__name__)

TAG_COLUMN = "tag"
# Prediction, version and depth of a row that no domain accepted.
UNROUTED = -1

TagsArgument = str | Sequence[str | Sequence[str] | None] | pd.Series | np.ndarray | None


@dataclass
class DomainPart:
    """The rows of one routed batch that went to one domain (None: to no domain), and why."""

    domain: str | None
    version: int | None
    rows: int
    # One entry per distinct route of these rows: RouteDecision.to_dict() or the inference evidence.
    routes: list[dict[str, Any]] = field(default_factory=list)
    # For a chained domain: every stage that served these rows (StageRecord.summary()).
    stages: list[dict[str, Any]] = field(default_factory=list)
    # 0-based positions of these rows in the routed batch, in input order.
    positions: np.ndarray | None = None
    # Why these rows got no prediction and the quarantine folder that keeps them, for a part
    # that failed with isolate_failures. Rows of no domain have theirs in RoutedPredictions.
    error: MyceliumError | None = None
    quarantine: str | None = None


@dataclass
class RoutedPredictions:
    """Predictions of a routed batch, one entry per input row, in input order.

    ``route`` explains each row's decision in one line. ``stages`` holds, per row of a chained
    domain, one dict per stage (slot, domain, version, patches, depth), upstream first, and an
    empty tuple for other rows. ``parts`` lists the domain parts the batch was split into, in
    the order their first row appears. ``error`` and ``quarantine`` hold, per row without a
    prediction, the reason in one line and the quarantine folder that keeps the row, and None
    for predicted rows.
    """

    prediction: np.ndarray
    domain: np.ndarray
    version: np.ndarray
    depth: np.ndarray
    route: np.ndarray
    parts: list[DomainPart]
    stages: np.ndarray | None = None
    error: np.ndarray | None = None
    quarantine: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prediction)

    def to_frame(self, index: pd.Index | None = None) -> pd.DataFrame:
        """Return columns prediction, domain, version, depth, stages and route; unrouted rows hold <NA>.

        ``stages`` is one line per row, e.g. ``a: vision/digits v3 depth 1; b: ...; vision/digit-pairs
        v1 depth 0``, and empty for a domain without upstream inputs.
        """
        routed = self.prediction != UNROUTED

        def nullable(values: np.ndarray) -> pd.arrays.IntegerArray:
            array = pd.array(values, dtype="Int64")
            array[~routed] = pd.NA
            return array

        return pd.DataFrame(
            {
                "prediction": nullable(self.prediction),
                "domain": self.domain,
                "version": nullable(self.version),
                "depth": nullable(self.depth),
                "stages": [describe_stages(row) for row in self._stages()],
                "route": self.route,
            },
            index=index,
        )

    def _stages(self) -> np.ndarray:
        if self.stages is None:
            return np.full(len(self), (), dtype=object)
        return self.stages


def describe_stages(stages: tuple[dict[str, Any], ...]) -> str:
    """Return one line for a row's stages: ``a: vision/digits v3 depth 1; ...``."""
    lines = []
    for stage in stages:
        slot = "" if stage["slot"] == "(requested)" else f"{stage['slot']}: "
        lines.append(f"{slot}{stage['domain']} v{stage['version']} depth {stage['depth']}")
    return "; ".join(lines)


def route_batch(
    system: Mycelium,
    frame: pd.DataFrame,
    tags: TagsArgument = None,
    *,
    tag_column: str = TAG_COLUMN,
    validate: bool = True,
    name: str = "batch",
    flush: bool = False,
    isolate_failures: bool = False,
) -> RoutedPredictions:
    """Route every row of ``frame`` to its domain and predict it there.

    Args:
        system: the deployment whose routing table and subgraphs serve the rows.
        frame: the rows. Columns other than the domains' schema columns, ``label`` and the
            tag column are ignored.
        tags: one tag (or comma-separated tags) for every row, or one entry per row: a tag,
            comma-separated tags, a list of tags, or None for an untagged row. By default the
            tags are read from ``frame[tag_column]`` if that column exists.
        tag_column: name of the column that contains each row's tags.
        validate: check each domain's rows against its Great Expectations suite first. A part
            that fails is quarantined and DataValidationError is raised. It takes about 0.5 s
            per part (``python benchmarks/routing.py`` measures it).
        name: batch name used in events, messages and quarantine folders.
        flush: write the use counts to the routing table before returning. Otherwise they
            stay in memory until ``system.controller.flush_locality()``, so a stream of
            small batches does not write the table once per batch.
        isolate_failures: when a domain's part fails validation or routing (any MyceliumError
            but InputError), quarantine only that part and predict the other parts. The
            failed part's rows get no prediction, and its DomainPart and the ``error`` and
            ``quarantine`` of its rows give the reason and the folder. By default the first
            failed part raises.

    Returns:
        The predictions, the domain and subgraph version that served each row, and why.

    Raises:
        EmptyDataError: ``frame`` has no rows.
        InputError: ``tags`` does not fit ``frame``.
        RoutingError: a row's tags are invalid, unknown, ambiguous or lead to a retired
            domain, or (without ``isolate_failures``) a cold domain failed its gate.
        DataValidationError: (without ``isolate_failures``) a domain's rows failed validation;
            they were quarantined.
    """
    if len(frame) == 0:
        raise EmptyDataError(f"Batch {name!r} has no rows; there is nothing to route.")
    row_tags = _row_tags(frame, tags, tag_column)
    n_rows = len(frame)
    prediction = np.full(n_rows, UNROUTED, dtype=np.int64)
    version = np.full(n_rows, UNROUTED, dtype=np.int64)
    depth = np.full(n_rows, UNROUTED, dtype=np.int64)
    domain_of = np.empty(n_rows, dtype=object)
    route = np.empty(n_rows, dtype=object)
    stages = np.empty(n_rows, dtype=object)
    stages.fill(())
    error = np.full(n_rows, None, dtype=object)
    quarantine = np.full(n_rows, None, dtype=object)
    assignments = _assign_domains(system, frame, row_tags, tag_column, name)

    parts = []
    for domain, (positions, routes, lines, folders) in assignments.items():
        rows = frame if len(positions) == n_rows else frame.iloc[positions]
        route[positions] = lines
        if domain is None:
            # Each group of unaccepted rows has its own folder, so the rows keep their own path.
            error[positions] = lines
            quarantine[positions] = folders
            parts.append(DomainPart(None, None, len(positions), routes, positions=positions))
            continue
        try:
            served, part_version, part_stages = _predict_part(system, domain, rows, validate=validate, name=name,
                                                              tag_column=tag_column)
        except MyceliumError as exc:
            # An InputError comes from the columns of the whole file, so it stops the caller's run.
            if not isolate_failures or isinstance(exc, InputError):
                raise
            path = _keep_failed_part(system, domain, rows, exc, name)
            error[positions] = one_line(exc)
            quarantine[positions] = path
            parts.append(DomainPart(domain, None, len(positions), routes, positions=positions, error=exc,
                                    quarantine=path))
            continue
        prediction[positions] = served.labels
        depth[positions] = served.depth
        version[positions] = part_version
        domain_of[positions] = domain
        summaries = []
        if part_stages:
            for offset, position in enumerate(positions):
                stages[position] = tuple(stage.for_row(offset) for stage in part_stages)
            summaries = [stage.summary() for stage in part_stages]
        system.controller.record_use(domain, len(positions))
        parts.append(DomainPart(domain, part_version, len(positions), routes, summaries, positions=positions))
        system.events.emit("batch_predicted", step=system.step, batch=name, domain=domain, version=part_version,
                           rows=len(positions), routing=routes, stages=summaries)
    unrouted = [part for part in parts if part.domain is None]
    if unrouted:
        system.events.emit("rows_unrouted", step=system.step, batch=name, rows=sum(p.rows for p in unrouted),
                           routing=[route for part in unrouted for route in part.routes])
    if flush:
        system.controller.flush_locality()
    return RoutedPredictions(prediction, domain_of, version, depth, route, parts, stages, error, quarantine)


def _keep_failed_part(system: Mycelium, domain: str, rows: pd.DataFrame, exc: MyceliumError, name: str) -> str:
    """Return the quarantine folder that keeps ``rows``, the part of batch ``name`` that failed
    for ``domain``, quarantining them unless ``exc`` already did.

    A routing error quarantines nothing, and a chained domain's validation error can keep the
    computed inputs in place of the request's columns.
    """
    path = getattr(exc, "quarantine_path", None)
    if path is not None and holds_rows(Path(path), rows):
        return str(path)
    reason = one_line(exc)
    path = quarantine_batch(rows, name=f"{domain}:{name}", reason=reason, quarantine_dir=system.params.paths.quarantine)
    system.events.emit("batch_quarantined", step=system.step, domain=domain, batch=name, path=path, reason=reason)
    return str(path)


def _row_tags(frame: pd.DataFrame, tags: TagsArgument, tag_column: str) -> str | None | list[str | None]:
    """Return one tag key for the whole batch, or a list with one key per row.

    A key is a tag, or several tags joined by commas, or None for untagged rows. When every
    row has the same key, that key is returned once, so the batch is not split.
    """
    has_column = tag_column in frame.columns
    if isinstance(tags, str):
        if has_column:
            raise InputError(
                f"Tags were given both as the argument {tags!r} and as the column {tag_column!r}; "
                f"pass only one of them, or drop the column."
            )
        if not tags.strip():
            raise InputError(f"The tag {tags!r} for every row is empty; pass a tag such as 'vision/digits', or "
                             "tags=None to route untagged rows by domain inference.")
        return _cell_key(tags)
    if tags is None:
        if not has_column:
            return None
        values = frame[tag_column]
    else:
        if has_column:
            raise InputError(
                f"Tags were given both as a list and as the column {tag_column!r}; pass only one of them."
            )
        values = tags
        if len(values) != len(frame):
            raise InputError(
                f"Got {len(values)} tags for {len(frame)} rows; pass one tag (or None) per row, or a single tag."
            )
    keys = []
    for position, value in enumerate(values):
        try:
            keys.append(_cell_key(value))
        except InputError as exc:
            if tags is not None:
                raise
            raise InputError(
                f"Tag {value!r} in column {tag_column!r} (row with index {frame.index[position]}) is "
                f"{type(value).__name__}, not text; a tag is a string such as 'vision/digits'. If {tag_column!r} does "
                "not contain tags, rename it, or pass the column that does as the tag column (--tag-column in "
                "`mycelium route`)."
            ) from exc
    first = keys[0]
    if all(key == first for key in keys):
        return first
    return keys


def _cell_key(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(str(tag).strip() for tag in value) or None
    if pd.isna(value):
        return None
    raise InputError(f"Tag {value!r} is {type(value).__name__}, not text; a tag is a string such as 'vision/digits'.")


def _assign_domains(
    system: Mycelium, frame: pd.DataFrame, row_tags: str | None | list[str | None], tag_column: str, name: str
) -> dict[str | None, tuple[np.ndarray, list[dict[str, Any]], Any, np.ndarray | None]]:
    """Return, per domain (None: no domain), its row positions, its distinct routes and each
    row's route line (one string for every row, or one per row). For the rows of no domain,
    a fourth entry gives the quarantine folder that keeps each row; it is None for a domain."""
    n_rows = len(frame)
    if not isinstance(row_tags, list):
        if row_tags is not None:
            decision = decide_tag(system, row_tags, rows=np.arange(n_rows))
            return {decision.domain: (np.arange(n_rows), [decision.to_dict()], decision.describe(), None)}
        row_tags = [None] * n_rows

    keys = np.asarray(row_tags, dtype=object)
    codes, uniques = pd.factorize(keys, use_na_sentinel=True)
    domain_codes = np.full(n_rows, -1, dtype=np.int64)
    lines = np.empty(n_rows, dtype=object)
    folders = np.full(n_rows, None, dtype=object)
    domains: list[str | None] = []
    routes: dict[str | None, list[dict[str, Any]]] = {}

    def code_of(domain: str | None) -> int:
        if domain not in routes:
            domains.append(domain)
            routes[domain] = []
        return domains.index(domain)

    for index, key in enumerate(uniques):
        selected = codes == index
        decision = decide_tag(system, key, rows=np.flatnonzero(selected))
        domain_codes[selected] = code_of(decision.domain)
        lines[selected] = decision.describe()
        routes[decision.domain].append(decision.to_dict())

    untagged = np.flatnonzero(codes == -1)
    for positions, domain, evidence, line, folder in _infer_groups(system, frame, untagged, tag_column):
        domain_codes[positions] = code_of(domain)
        lines[positions] = line
        folders[positions] = folder
        routes[domain].append(evidence)

    # Parts in the order of their first row, each with its rows in input order.
    order = np.argsort(domain_codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(domain_codes[order])) + 1
    groups = sorted(np.split(order, boundaries), key=lambda positions: positions[0])
    assignments = {}
    for group in groups:
        domain = domains[domain_codes[group[0]]]
        assignments[domain] = (group, routes[domain], lines[group], folders[group] if domain is None else None)
    return assignments


def decide_tag(system: Mycelium, key: str, *, rows: np.ndarray):
    """Return the route of rows tagged ``key`` (one tag, or several separated by commas).

    Raises:
        RoutingError: naming the first of ``rows`` (0-based positions) and the tag, when the
            tag is invalid, unknown, ambiguous or leads to a retired domain.
    """
    tags = key.split(",") if "," in key else key
    try:
        return system.controller.explain(tags)
    except RoutingError as exc:
        where = f"row {rows[0]}" + (f" and {len(rows) - 1} more rows" if len(rows) > 1 else "")
        raise RoutingError(f"Cannot route {where} tagged {key!r}: {exc}") from exc


def _infer_groups(system: Mycelium, frame: pd.DataFrame, positions: np.ndarray, tag_column: str):
    """Yield (positions, domain or None, evidence, route line, quarantine folder or None) for
    groups of untagged rows that fill the same columns."""
    if len(positions) == 0:
        return
    rows = frame.iloc[positions].drop(columns=[tag_column], errors="ignore")
    filled = rows.notna().to_numpy()
    patterns, inverse = np.unique(filled, axis=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        members = np.flatnonzero(inverse.ravel() == index)
        group = rows.iloc[members][rows.columns[pattern]]
        problem = _not_finite(group)
        chained = chained_request_domain(system, list(group.columns))
        if chained is not None:
            domain, evidence = None, {"tag": None, "reason": untagged_chained_reason(chained)}
        elif problem:
            domain, evidence = None, {"tag": None, "reason": problem}
        else:
            domain, evidence = system.infer_domain(group)
        if domain is not None:
            yield positions[members], domain, evidence, f"inferred: {evidence['reason']}", None
            continue
        # Rows no domain takes are kept for inspection rather than only marked in the output.
        folder = quarantine_batch(rows.iloc[members], name="unrouted-rows", reason=evidence["reason"],
                                  quarantine_dir=system.params.paths.quarantine)
        yield positions[members], None, evidence, f"unrouted: {evidence['reason']}; rows kept in {folder}", str(folder)


def _not_finite(group: pd.DataFrame) -> str | None:
    problems = non_finite_columns(group.drop(columns=[LABEL], errors="ignore"))
    text = [found.column for found in problems if not found.numeric]
    if text:
        return f"columns {text[:5]} are not numeric, so no domain's OOD score applies"
    if problems:
        # Each group fills the same columns, so a value that is not finite is infinite, not NaN.
        return "some values are infinite, so no domain's OOD score applies"
    return None


def _predict_part(system: Mycelium, domain: str, rows: pd.DataFrame, *, validate: bool, name: str,
                  tag_column: str = TAG_COLUMN):
    """Return the prediction of ``domain`` for ``rows``, the subgraph version that made it, and
    for a chained domain the record of every stage (empty otherwise)."""
    upstream: list[StageRecord] = []
    if domain in system.controller.table.upstream:
        chained = chain_inputs(system, domain, rows, validate=validate, name=name)
        rows, upstream = chained.frame, chained.stages
    record = _hot_record(system, domain, rows, name)
    subgraph = system.subgraph(domain)
    present = set(rows.columns)
    missing = [column for column in subgraph.schema.columns if column not in present]
    if missing:
        raise InputError(
            f"Batch {name!r} is missing columns {_preview(missing)} that domain {domain!r} needs"
            f"{unused_columns_clause(rows, subgraph.schema.columns, tag_column)}; add them, or tag these rows for the "
            "domain whose input columns they have."
        )
    if validate:
        _validate_part(system, domain, rows, subgraph.info["expectations"], name)
    try:
        served = subgraph.predict(rows)
    except (ValueError, TypeError):
        # Unvalidated rows may contain values that no expert can score, and then they are quarantined.
        _require_numbers(system, domain, rows, subgraph.schema.columns, name)
        raise
    if upstream:
        upstream.append(StageRecord("(requested)", domain, record.version, tuple(record.patches), served.depth))
    return served, record.version, upstream


def _preview(columns: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(columns) - limit} more" if len(columns) > limit else ""
    return f"{list(columns[:limit])}{more}"


def unused_columns_clause(rows: pd.DataFrame, inputs: Sequence[str], tag_column: str | None = None) -> str:
    """Return a clause naming the filled columns of ``rows`` that are not ``inputs``, the label or
    the tags, such as input columns under another name. It is empty when there are none.

    An error on missing input columns appends it, so that renamed columns are named too.
    Columns without a value in these rows are left out, because in a mixed file they are
    another domain's columns.
    """
    known = {*inputs, LABEL, tag_column}
    unused = [str(column) for column in rows.columns if column not in known and rows[column].notna().any()]
    if not unused:
        return ""
    return f", and has columns {_preview(unused)} that are not its inputs (renamed input columns?)"


def _hot_record(system: Mycelium, domain: str, rows: pd.DataFrame, name: str, *, request_rows: int | None = None):
    """Return the record of ``domain`` once it is hot, remembering it first when it is cold.

    ``request_rows`` is the number of rows that batch ``name`` requested. Pass it when ``rows``
    are a chain stage's stacked inputs, where two slots of 100 requests make 200 rows.
    """
    record = system.controller.domain(domain)
    if record.state != State.COLD.value:
        return record
    result = system.remember(domain, recent=rows)
    if result.passed:
        return system.controller.domain(domain)
    raise failed_restore_error(result, len(rows) if request_rows is None else request_rows, name)


def failed_restore_error(result: RememberResult, rows: int, name: str, kept: Path | None = None) -> RoutingError:
    """Return the error for ``rows`` requested by batch ``name`` of a cold domain that stayed cold.

    ``result`` is the failed Remembering. Rows that broke the domain's expectations are named
    with their columns, values and row indexes, because the fix is in the batch, not the bundle.
    ``kept`` is the quarantine folder of the batch, when the caller kept it.
    """
    domain = result.domain
    where = f" The batch is kept in {kept}." if kept is not None else ""
    if result.expectations_passed is False:
        return RoutingError(
            f"The {rows} rows of batch {name!r} failed the expectations of cold domain {domain!r}: "
            f"{'; '.join(result.expectations_failures)}. The rows were not predicted.{where} {domain!r} stays cold "
            "until a batch that meets its expectations requests it; correct those values and send the rows again."
        )
    return RoutingError(
        f"Domain {domain!r} could not be restored ({result.reason}), so the {rows} rows of batch {name!r} were not "
        f"predicted.{where} Fix the stored bundle or choose a version with `mycelium remember {domain} --version "
        "VERSION`, then send the batch again."
    )


def chain_inputs(system: Mycelium, domain: str, frame: pd.DataFrame, *, validate: bool, name: str) -> ChainInputs:
    """Run the upstream stages of chained ``domain`` on ``frame`` and return its input rows.

    Each upstream domain is remembered first when it is cold, its rows are checked against its
    expectations when ``validate`` is set, and its use is recorded.

    Raises:
        InputError: ``frame`` lacks request columns of an upstream slot.
        DataValidationError: an upstream stage's rows failed validation; they were quarantined.
        RoutingError: a cold upstream domain failed its validation gate.
    """
    plan = system.controller.chain(domain)

    def columns_of(upstream_domain: str) -> list[str]:
        return list(system.controller.domain(upstream_domain).columns)

    if validate:
        _validate_request(system, plan, frame, columns_of, name)

    def serve(stage: ChainStage, rows: pd.DataFrame, groups: np.ndarray) -> ServedStage:
        # Each slot's group has one row per request, in request order, so expectation failures
        # of the stacked rows name request rows.
        request_index = frame.index[np.arange(len(rows)) % len(frame)]
        record = _hot_record(system, stage.domain, rows.set_axis(request_index), name, request_rows=len(frame))
        subgraph = system.subgraph(stage.domain)
        # Slots read from the request were checked by _validate_request; outputs of inner stages were not.
        if validate and any(node.inputs for node in stage.nodes):
            _validate_part(system, stage.domain, rows, subgraph.info["expectations"], f"{name}-chain")
        outputs, depth = subgraph.outputs(rows, stage.outputs, groups=groups)
        system.controller.record_use(stage.domain, len(rows))
        return ServedStage(outputs, depth, record.version, tuple(record.patches))

    return compute_inputs(plan, frame, serve, columns_of)


def _validate_request(
    system: Mycelium, plan: ChainPlan, frame: pd.DataFrame, columns_of: Callable[[str], list[str]], name: str
) -> None:
    """Validate each slot's request columns against its upstream domain's expectations before
    the slots are stacked, so that an error names request columns (``a.px_05``) and request
    rows, and the quarantine keeps the request's rows.

    Does nothing when request columns are missing: ``compute_inputs`` then raises the
    InputError that lists them.
    """
    needed = request_columns(plan, columns_of)
    if any(column not in frame.columns for column in needed):
        return
    columns: list[str] = []
    features: dict[str, Any] = {}
    slot_spec: dict[str, Any] = {}
    for leaf in plan.leaves():
        slot_columns = columns_of(leaf.domain)
        slot_rows = frame[[leaf.prefix + column for column in slot_columns]].set_axis(slot_columns, axis=1)
        _hot_record(system, leaf.domain, slot_rows, name)
        slot_spec = system.subgraph(leaf.domain).info["expectations"]
        for column in slot_spec["columns"]:
            if column == slot_spec["label_column"]:
                continue
            columns.append(leaf.prefix + column)
            if column in slot_spec["features"]:
                features[leaf.prefix + column] = slot_spec["features"][column]
    # The request's label belongs to the requested domain, whose own validation checks it.
    if LABEL in frame.columns:
        columns.append(LABEL)
    spec = {**slot_spec, "columns": columns, "features": features, "label_column": None, "label_values": None}
    _validate_part(system, plan.domain, frame, spec, name)


def chained_request_domain(system: Mycelium, columns: list[str]) -> str | None:
    """Return the chained domain whose request columns are exactly ``columns`` (``label``
    aside), or None. Inference cannot route such rows: no domain's input has these columns."""
    feature_columns = set(columns) - {LABEL}
    controller = system.controller
    for domain, inputs in sorted(controller.table.upstream.items()):
        if not inputs or controller.domain(domain).state == State.RETIRED.value:
            continue
        needed = request_columns(controller.chain(domain), lambda name: list(controller.domain(name).columns))
        if set(needed) == feature_columns:
            return domain
    return None


def untagged_chained_reason(domain: str) -> str:
    """Return why untagged rows in the request format of chained ``domain`` are not routed, and the fix."""
    return (f"the columns are the request columns of chained domain {domain!r}, which domain inference "
            f"cannot route; tag the rows {domain!r} (e.g. `--tag {domain}`)")


def _require_numbers(system: Mycelium, domain: str, rows: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """Quarantine ``rows`` and raise DataValidationError when an input column contains a value that is
    not a finite number; return otherwise.

    Route calls it when an unvalidated batch failed to predict: the expert and its OOD check
    cannot score such a value, and the batch would otherwise end in an error that keeps none of
    its rows.
    """
    problems = [found for found in non_finite_columns(rows, columns) if len(found.positions)]
    if not problems:
        return
    bad_rows = np.unique(np.concatenate([found.positions for found in problems]))
    # The first bad value in row-major order: the first bad row, and its first bad column.
    column = next(found.column for found in problems if bad_rows[0] in found.positions)
    first = rows.index[bad_rows[0]]
    value = rows.at[first, column]
    value = value.item() if isinstance(value, np.generic) else value
    reason = (f"{len(bad_rows)} of {len(rows)} rows contain a value that is not a finite number, "
              f"first {value!r} in column {column!r} (rows with index {first})")
    path = quarantine_batch(rows, name=f"{domain}:{name}", reason=reason, quarantine_dir=system.params.paths.quarantine)
    system.events.emit("batch_quarantined", step=system.step, domain=domain, batch=name, path=path, reason=reason)
    raise DataValidationError(
        f"Batch {name!r} for domain {domain!r} cannot be predicted: {reason}. It was quarantined in {path}; "
        "replace or drop those values and route it again.",
        quarantine_path=str(path),
    )


def _validate_part(system: Mycelium, domain: str, rows: pd.DataFrame, spec: dict[str, Any], name: str) -> None:
    checked, spec = spec_columns(rows, spec)
    try:
        require_valid(checked, spec, name=f"{domain}:{name}", quarantine_dir=system.params.paths.quarantine,
                      quarantine_rows=rows)
    except DataValidationError as exc:
        system.events.emit("batch_quarantined", step=system.step, domain=domain, batch=name,
                           path=exc.quarantine_path, reason=one_line(exc))
        raise
