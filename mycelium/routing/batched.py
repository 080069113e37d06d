"""Routing of a long frame, such as a file, in batches of a fixed size that go on past a failed batch.

Each batch is routed by ``route_batch``. A batch can fail validation or routing, for example
with a value out of range, a tag that no domain has or a cold domain that failed its gate.
Such a batch is quarantined whole, with every column as given, so it can be fixed and routed
again. Its rows get no prediction, and their ``error`` and ``quarantine`` columns give the
reason and the quarantine folder. The other batches are routed as usual. A row that no domain
accepts gets no prediction either: its ``error`` is its route, which names the folder that keeps it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mycelium.errors import EmptyDataError, InputError, MyceliumError
from mycelium.routing.batch import TAG_COLUMN, decide_tag, route_batch
from mycelium.validation.quarantine import REASON_FILE, quarantine_batch

if TYPE_CHECKING:
    from mycelium.system import Mycelium

logger = logging.getLogger(__name__)

# Columns of a row's outcome beside RoutedPredictions.to_frame(): why its batch failed and where it is kept.
ERROR_COLUMN = "error"
QUARANTINE_COLUMN = "quarantine"


@dataclass(frozen=True)
class FailedBatch:
    """Consecutive rows, by 0-based position in the routed frame, that failed together."""

    first_row: int
    last_row: int
    error: str
    quarantine_path: str

    @property
    def rows(self) -> int:
        return self.last_row - self.first_row + 1


@dataclass
class BatchedRoutes:
    """Outcome of ``route_batches``.

    ``predictions`` has one row per attempted input row, in input order and indexed by the
    row's position in the input frame, with the columns of ``RoutedPredictions.to_frame()``
    and ``error`` and ``quarantine``. When ``stopped`` is set, the run stopped at that error
    and ``predictions`` ends before row ``len(predictions)``; otherwise it has every row.
    """

    predictions: pd.DataFrame
    failures: list[FailedBatch] = field(default_factory=list)
    stopped: MyceliumError | None = None

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
    """Route ``frame`` in batches of ``batch_size`` rows, quarantining each batch that fails.

    An InputError from a batch comes from the frame's columns, for example rows that lack
    the columns of their domain or a tag cell that is not text. Later rows of that kind would
    fail the same way, so it stops the run without quarantining the batch, and ``stopped`` is
    set.

    Args:
        system: the deployment whose routing table and subgraphs serve the rows.
        frame: the rows, with a 0-based RangeIndex (``frame.reset_index(drop=True)``), so
            that validation messages and outputs name rows by their position.
        tag: one tag (or comma-separated tags) for every row. Without it, the tags are read
            from ``frame[tag_column]`` when that column exists, and untagged rows are routed
            by domain inference.
        tag_column: name of the column that contains each row's tags.
        batch_size: rows routed and validated together.
        validate: check each domain's rows against its Great Expectations suite.
        name: prefix of each batch's name, which is ``<name>-rows-<first>-<last>``.
        fail_fast: stop at the first failed batch. It is still quarantined and its rows are
            in the predictions with the error, but later rows are not routed.
        on_batch: called with the number of rows of each batch once it is routed or failed.

    Returns:
        The predictions and the failed batches. Use counts are written to the routing table.

    Raises:
        EmptyDataError: ``frame`` has no rows.
        InputError: ``batch_size`` is below 1, ``frame`` does not have a RangeIndex, or ``tag`` is
            empty.
        RoutingError: ``tag`` is invalid or unknown. Nothing is routed then.
    """
    if len(frame) == 0:
        raise EmptyDataError(f"{name!r} has no rows; there is nothing to route.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        raise InputError(f"{name!r} must have a 0-based RangeIndex; pass frame.reset_index(drop=True).")
    if tag is not None and not tag.strip():
        raise InputError(f"The tag for every row of {name!r} is empty; pass a tag such as 'vision/digits', "
                         "or None to route untagged rows by domain inference.")
    if tag is not None:
        # A bad tag would fail every batch the same way, so it is rejected before any batch.
        decide_tag(system, tag.strip(), rows=np.arange(len(frame)))

    parts: list[pd.DataFrame] = []
    failures: list[FailedBatch] = []
    stopped: MyceliumError | None = None
    try:
        for start in range(0, len(frame), batch_size):
            batch = _numbers_from_text(frame.iloc[start : start + batch_size], keep=tag_column)
            batch_name = f"{name}-rows-{start}-{start + len(batch) - 1}"
            try:
                routed = route_batch(system, batch, tag, tag_column=tag_column, validate=validate, name=batch_name)
            except InputError as exc:
                stopped = exc
                break
            except MyceliumError as exc:
                failure = _keep_failed_batch(system, batch, exc, batch_name)
                failures.append(failure)
                parts.append(_failed_frame(batch.index, failure))
                if fail_fast:
                    stopped = exc
                    break
            else:
                outcome = routed.to_frame(index=batch.index)
                # A row that no domain accepts has no prediction, and its route gives the reason and the folder that keeps it.
                unrouted = outcome["domain"].isna()
                parts.append(outcome.assign(**{ERROR_COLUMN: outcome["route"].where(unrouted, None),
                                               QUARANTINE_COLUMN: None}))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        system.controller.flush_locality()

    predictions = pd.concat(parts) if parts else _failed_frame(pd.RangeIndex(0), None)
    return BatchedRoutes(predictions, failures, stopped)


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


def _keep_failed_batch(system: Mycelium, batch: pd.DataFrame, exc: MyceliumError, name: str) -> FailedBatch:
    """Return the failure of ``batch``, quarantining the whole batch unless ``exc`` already did."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    path = getattr(exc, "quarantine_path", None)
    if path is None or not _holds_batch(Path(path), batch):
        # A routing error quarantines nothing, and a validation error only the rows of one
        # domain, or a chained domain's computed inputs in place of the request's columns.
        path = quarantine_batch(batch, name=name, reason=str(exc), quarantine_dir=system.params.paths.quarantine)
        system.events.emit("batch_quarantined", step=system.step, domain=None, batch=name, path=path,
                           reason=lines[0])
    logger.info("Batch %r (%d rows) failed and is kept in %s: %s", name, len(batch), path, lines[0])
    return FailedBatch(int(batch.index[0]), int(batch.index[-1]), " ".join(lines), str(path))


def _holds_batch(folder: Path, batch: pd.DataFrame) -> bool:
    """Return True when quarantine ``folder`` contains as many rows as ``batch``, with the same columns."""
    try:
        reason = json.loads((folder / REASON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return reason.get("row_count") == len(batch) and reason.get("columns") == [str(c) for c in batch.columns]


def _failed_frame(index: pd.Index, failure: FailedBatch | None) -> pd.DataFrame:
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
