"""Routing of a long frame, such as a file, in batches of a fixed size that go on past a failed batch.

Each batch is routed by ``route_batch``. A domain's part of a batch can fail validation or
routing, for example with a value out of range or a cold domain that failed its gate. That
part is quarantined with every column as given, so it can be fixed and routed again, and the
batch's other parts are predicted. A batch whose tags cannot be resolved, for example a tag
that no domain has, is quarantined whole. Failed rows get no prediction, and their ``error``
and ``quarantine`` columns give the reason and the quarantine folder. A row that no domain
accepts gets no prediction either: its ``error`` is its route, and its ``quarantine`` the folder
that keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mycelium.errors import EmptyDataError, InputError, MyceliumError, RoutingError, one_line
from mycelium.routing.batch import TAG_COLUMN, RoutedPredictions, decide_tag, route_batch
from mycelium.validation.quarantine import holds_rows, quarantine_batch

if TYPE_CHECKING:
    from mycelium.system import Mycelium

logger = logging.getLogger(__name__)

# Columns of a row's outcome beside RoutedPredictions.to_frame(): why its batch failed and where it is kept.
ERROR_COLUMN = "error"
QUARANTINE_COLUMN = "quarantine"


@dataclass(frozen=True)
class FailedRows:
    """Rows of one batch that failed together and are kept in one quarantine folder: the whole
    batch, the part of a mixed batch that went to one domain, or (with ``fail_fast``) a group
    of rows that no domain accepts. ``row_numbers`` are the rows' index labels in the routed frame.
    """

    row_numbers: tuple[int, ...]
    error: str
    quarantine_path: str

    @property
    def rows(self) -> int:
        return len(self.row_numbers)

    @property
    def first_row(self) -> int:
        return self.row_numbers[0]

    @property
    def last_row(self) -> int:
        return self.row_numbers[-1]


@dataclass
class BatchedRoutes:
    """Outcome of ``route_batches``.

    ``predictions`` has one row per attempted input row, in input order and indexed by the
    row's index in the input frame, with the columns of ``RoutedPredictions.to_frame()``
    and ``error`` and ``quarantine``. When ``stopped`` is set, the run stopped at that error
    in the batch whose first row is at position ``stopped_row`` of the frame: the rows before
    it are routed, and ``predictions`` ends with that batch (fail_fast) or before it (an
    InputError). Otherwise ``predictions`` has every row.
    """

    predictions: pd.DataFrame
    failures: list[FailedRows] = field(default_factory=list)
    stopped: MyceliumError | None = None
    stopped_row: int | None = None

    @property
    def failed_rows(self) -> int:
        return sum(failure.rows for failure in self.failures)


def route_batches(
    system: Mycelium,
    frame: pd.DataFrame,
    tag: str | None = None,
    *,
    tag_column: str = TAG_COLUMN,
    batch_size: int = 1024,
    validate: bool = True,
    name: str = "batch",
    fail_fast: bool = False,
    on_batch: Callable[[int], object] | None = None,
) -> BatchedRoutes:
    """Route ``frame`` in batches of ``batch_size`` rows, quarantining the rows that fail.

    When one domain's part of a mixed batch fails validation or routing, only that part is
    quarantined, and the batch's other parts are predicted. A batch whose tags cannot be
    resolved fails whole. An InputError from a batch comes from the frame's columns, for
    example rows that lack the columns of their domain or a tag cell that is not text. Later
    rows of that kind would fail the same way, so it stops the run without quarantining the
    batch, and ``stopped`` is set.

    Args:
        system: the deployment whose routing table and subgraphs serve the rows.
        frame: the rows, indexed by unique integers that name them in validation messages,
            batch names and outputs: a 0-based RangeIndex (``frame.reset_index(drop=True)``)
            names rows by position, and a quarantined batch keeps the row numbers of the frame
            it came from.
        tag: one tag (or comma-separated tags) for every row. Without it, the tags are read
            from ``frame[tag_column]`` when that column exists, and untagged rows are routed
            by domain inference.
        tag_column: name of the column that contains each row's tags.
        batch_size: rows routed and validated together.
        validate: check each domain's rows against its Great Expectations suite.
        name: prefix of each batch's name, which is ``<name>-rows-<first>-<last>``.
        fail_fast: stop at the first batch with rows that failed or that no domain accepts.
            They are still quarantined, and the batch's rows are in the predictions, but
            later rows are not routed.
        on_batch: called with the number of rows of each batch once it is routed or failed.

    Returns:
        The predictions and the failed batches. Use counts are written to the routing table.

    Raises:
        EmptyDataError: ``frame`` has no rows.
        InputError: ``batch_size`` is below 1, ``frame``'s index is not unique integers, or ``tag``
            is empty.
        RoutingError: ``tag`` is invalid or unknown. Nothing is routed then.
    """
    if len(frame) == 0:
        raise EmptyDataError(f"{name!r} has no rows; there is nothing to route.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if not (pd.api.types.is_integer_dtype(frame.index) and frame.index.is_unique):
        raise InputError(f"{name!r} must have an index of unique integers; pass frame.reset_index(drop=True).")
    if tag is not None and not tag.strip():
        raise InputError(f"The tag for every row of {name!r} is empty; pass a tag such as 'vision/digits', "
                         "or None to route untagged rows by domain inference.")
    if tag is not None:
        # A bad tag would fail every batch the same way, so it is rejected before any batch.
        decide_tag(system, tag.strip(), rows=np.arange(len(frame)))

    parts: list[pd.DataFrame] = []
    failures: list[FailedRows] = []
    stopped: MyceliumError | None = None
    stopped_row: int | None = None
    try:
        for start in range(0, len(frame), batch_size):
            batch = _numbers_from_text(frame.iloc[start : start + batch_size], keep=tag_column)
            batch_name = f"{name}-rows-{batch.index[0]}-{batch.index[-1]}"
            try:
                routed = route_batch(system, batch, tag, tag_column=tag_column, validate=validate, name=batch_name,
                                     isolate_failures=True)
            except InputError as exc:
                stopped, stopped_row = exc, start
                break
            except MyceliumError as exc:
                failure = _keep_failed_batch(system, batch, exc, batch_name)
                failures.append(failure)
                parts.append(_failed_frame(batch.index, failure))
                if fail_fast:
                    stopped, stopped_row = exc, start
                    break
            else:
                parts.append(routed.to_frame(index=batch.index).assign(
                    **{ERROR_COLUMN: routed.error, QUARANTINE_COLUMN: routed.quarantine}))
                batch_failures, first_error = _failed_parts(routed, batch.index)
                failures.extend(batch_failures)
                if fail_fast:
                    first_error = first_error or _unrouted_error(routed, batch.index, batch_name, failures)
                    if first_error is not None:
                        stopped, stopped_row = first_error, start
                        break
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        system.controller.flush_locality()

    predictions = pd.concat(parts) if parts else _failed_frame(pd.RangeIndex(0), None)
    return BatchedRoutes(predictions, failures, stopped, stopped_row)


def _failed_parts(routed: RoutedPredictions, index: pd.Index) -> tuple[list[FailedRows], MyceliumError | None]:
    """Return the failed domain parts of a routed batch, and the error of the first one."""
    failures = []
    first_error = None
    for part in routed.parts:
        if part.error is None:
            continue
        row_numbers = tuple(int(row) for row in index[part.positions])
        failures.append(FailedRows(row_numbers, one_line(part.error), str(part.quarantine)))
        first_error = first_error or part.error
    return failures, first_error


def _unrouted_error(routed: RoutedPredictions, index: pd.Index, name: str, failures: list[FailedRows]) -> RoutingError | None:
    """Return the error that stops a fail-fast run at rows that no domain accepts, and add
    each group of them, with its quarantine folder, to ``failures``; None when every row has a domain."""
    groups = [part.positions for part in routed.parts if part.domain is None]
    if not groups:
        return None
    unrouted = np.sort(np.concatenate(groups))
    folders = pd.unique(routed.quarantine[unrouted])
    for folder in folders:
        members = unrouted[routed.quarantine[unrouted] == folder]
        failures.append(FailedRows(tuple(int(row) for row in index[members]), str(routed.error[members[0]]),
                                   str(folder)))
    first = unrouted[0]
    # The route line ends with the folder, which the caller names beside the rows it keeps.
    reason = str(routed.route[first]).removeprefix("unrouted: ").removesuffix(f"; rows kept in {routed.quarantine[first]}")
    return RoutingError(
        f"{len(unrouted)} rows of batch {name!r} are accepted by no domain, first row {int(index[first])}: {reason}. "
        "Tag them, or collect enough of them to train a new domain."
    )


def _numbers_from_text(batch: pd.DataFrame, *, keep: str) -> pd.DataFrame:
    """Return ``batch`` with each text column whose values all read as numbers converted to numbers.

    A CSV reader gives a whole column text values when one cell of the file is not a number.
    Converting batch by batch confines that cell's failure to its own batch, which keeps the
    text as given. The ``keep`` column (the tags) stays text.
    """
    converted = {}
    for column in batch.columns:
        if column == keep or batch[column].dtype != object:
            continue
        numbers = pd.to_numeric(batch[column], errors="coerce")
        if numbers.notna().sum() == batch[column].notna().sum():
            converted[column] = numbers
    return batch.assign(**converted) if converted else batch


def _keep_failed_batch(system: Mycelium, batch: pd.DataFrame, exc: MyceliumError, name: str) -> FailedRows:
    """Return the failure of ``batch``, quarantining the whole batch unless ``exc`` already did."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    path = getattr(exc, "quarantine_path", None)
    if path is None or not holds_rows(Path(path), batch):
        # A routing error, such as an unknown tag, quarantines nothing.
        path = quarantine_batch(batch, name=name, reason=str(exc), quarantine_dir=system.params.paths.quarantine)
        system.events.emit("batch_quarantined", step=system.step, domain=None, batch=name, path=path,
                           reason=lines[0])
    logger.info("Batch %r (%d rows) failed and is kept in %s: %s", name, len(batch), path, lines[0])
    return FailedRows(tuple(int(row) for row in batch.index), " ".join(lines), str(path))


def _failed_frame(index: pd.Index, failure: FailedRows | None) -> pd.DataFrame:
    """Return the output rows of a failed batch: no prediction, its error and quarantine folder."""
    missing = pd.array([pd.NA] * len(index), dtype="Int64")
    error = None if failure is None else failure.error
    quarantine = None if failure is None else failure.quarantine_path
    return pd.DataFrame(
        {
            "prediction": missing,
            "domain": np.full(len(index), None, dtype=object),
            "version": missing.copy(),
            "depth": missing.copy(),
            "stages": "",
            "route": np.full(len(index), None, dtype=object),
            ERROR_COLUMN: error,
            QUARANTINE_COLUMN: quarantine,
        },
        index=index,
    )
