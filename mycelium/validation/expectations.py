"""Data expectations of a domain, checked by Great Expectations (GX) on every batch.

``build_expectations`` derives a JSON-serialisable spec from reference data, and
``validate_frame`` runs it as a GX expectation suite. ``require_valid`` and
``split_valid_rows`` are the two gates: the first rejects a whole bad batch, the second
removes only the rows that broke a row-level expectation. Rejected rows always go to
quarantine, never silently away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mycelium.errors import ConfigError, DataValidationError, EmptyDataError
from mycelium.validation.quarantine import quarantine_batch

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationValidationResult,
    )
    from great_expectations.expectations.expectation import Expectation

# Analytics off unless the caller chose otherwise. Set before GX is imported. GX 1.24.1
# ships no analytics sender at all, so this only guards other GX versions.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

logger = logging.getLogger(__name__)

SPEC_FORMAT_VERSION = 1
# Numeric types for ExpectColumnValuesToBeInTypeList: numpy dtype names, then the pandas
# nullable dtypes, which GX 1.24.1 looks up by their class name in the pandas namespace.
NUMERIC_DTYPES: tuple[str, ...] = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
    "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype",
    "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype",
    "Float32Dtype", "Float64Dtype",
)  # fmt: skip
_SPEC_KEYS = (
    "format_version", "columns", "label_column", "features", "label_values", "min_row_count",
)  # fmt: skip
_MAX_SHOWN_VALUES = 5
_MAX_CACHED_SUITES = 64
_DATASOURCE_NAME = "mycelium"


# ---------------------------------------------------------------------------------------
# Spec


def build_expectations(
    reference: pd.DataFrame,
    *,
    label_column: str | None = "label",
    range_margin: float = 0.0,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Derive the data expectations of a domain from its reference data.

    Every feature column must be non-null, numeric and within the reference's min/max,
    widened on each side by ``range_margin`` times the reference range. The label column
    must hold one of the reference's labels. A batch needs at least one row. NaN in the
    reference is ignored when the bounds are computed.

    Args:
        reference: reference data. Its column order becomes the expected order.
        label_column: name of the label column, or None when the data is unlabelled.
        range_margin: non-negative widening of each feature's bounds, as a fraction of
            its range. A constant column keeps its single value as both bounds.
        bounds: known valid ``(min, max)`` of some feature columns, used as given instead
            of the reference min/max and margin. Use it where the reference does not reach
            the valid range, for example ``(0, 16)`` for every digit block count: a block
            that is always 0 in one data set can hold ink in another.

    Returns:
        A spec that round-trips through ``json.dumps`` and ``json.loads``.

    Raises:
        EmptyDataError: if ``reference`` has no rows.
        ConfigError: if an argument is invalid, or a feature column is not numeric or has
            no finite values.
    """
    if len(reference) == 0:
        raise EmptyDataError(
            "Reference data has no rows, so no expectations can be derived from it. "
            "Pass the domain's training table."
        )
    if not (math.isfinite(range_margin) and range_margin >= 0):
        raise ConfigError(f"range_margin must be a finite number >= 0, got {range_margin}.")
    non_string = [column for column in reference.columns if not isinstance(column, str)]
    if non_string:
        raise ConfigError(
            f"Column names must be strings, got {non_string}. Rename them, for example "
            "with df.columns = df.columns.astype(str)."
        )
    if label_column is not None and label_column not in reference.columns:
        raise ConfigError(
            f"Label column {label_column!r} not found in the reference columns "
            f"{list(reference.columns)}. Pass label_column=None for unlabelled data."
        )

    features = {
        column: _feature_bounds(reference[column], column, range_margin)
        for column in reference.columns
        if column != label_column
    }
    for column, (lowest, highest) in _checked_bounds(bounds or {}, list(features)).items():
        features[column] = {"min": lowest, "max": highest}
    label_values = None
    if label_column is not None:
        label_values = _label_values(reference[label_column], label_column)

    spec = {
        "format_version": SPEC_FORMAT_VERSION,
        "columns": list(reference.columns),
        "label_column": label_column,
        "features": features,
        "label_values": label_values,
        "min_row_count": 1,
        "range_margin": float(range_margin),
    }
    json.dumps(spec, allow_nan=False)  # Fails here, not later in a bundle writer.
    return spec


def _feature_bounds(series: pd.Series, column: str, range_margin: float) -> dict[str, float]:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        raise ConfigError(
            f"Feature column {column!r} has dtype {series.dtype}, expected a numeric dtype. "
            f"Convert it with pd.to_numeric or drop it from the reference."
        )
    lowest, highest = series.min(skipna=True), series.max(skipna=True)
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        raise ConfigError(
            f"Feature column {column!r} has no finite values to derive bounds from "
            f"(min {lowest}, max {highest}). Fix or drop the column."
        )
    margin = range_margin * float(highest - lowest)
    return {"min": float(lowest) - margin, "max": float(highest) + margin}


def _checked_bounds(
    bounds: Mapping[str, tuple[float, float]], feature_names: list[str]
) -> dict[str, tuple[float, float]]:
    checked = {}
    for column, pair in bounds.items():
        if column not in feature_names:
            raise ConfigError(
                f"bounds names {column!r}, which is not a feature column. "
                f"Use one of {feature_names}."
            )
        lowest, highest = (float(value) for value in pair)
        if not (math.isfinite(lowest) and math.isfinite(highest) and lowest <= highest):
            raise ConfigError(
                f"bounds for {column!r} must be finite with min <= max, got {tuple(pair)}."
            )
        checked[column] = (lowest, highest)
    return checked


def _label_values(series: pd.Series, column: str) -> list[int | str]:
    values = series.dropna().unique()
    if len(values) == 0:
        raise ConfigError(f"Label column {column!r} has no non-null values in the reference.")
    scalars = [value.item() if isinstance(value, np.generic) else value for value in values]
    if not all(isinstance(value, (int, str)) and not isinstance(value, bool) for value in scalars):
        raise ConfigError(
            f"Label column {column!r} must hold integers or strings, got dtype "
            f"{series.dtype}. Code the classes as 0..K-1."
        )
    return sorted(scalars, key=lambda value: (isinstance(value, str), value))


def _check_spec(spec: dict[str, Any]) -> None:
    missing = [key for key in _SPEC_KEYS if key not in spec]
    if missing:
        raise ConfigError(
            f"Expectation spec is missing the keys {missing}. Rebuild it with build_expectations."
        )
    if spec["format_version"] != SPEC_FORMAT_VERSION:
        raise ConfigError(
            f"Expectation spec has format_version {spec['format_version']}, this code reads "
            f"{SPEC_FORMAT_VERSION}. Rebuild it with build_expectations."
        )


def _spec_key(spec: dict[str, Any]) -> str:
    text = json.dumps(spec, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class ValidationFailure:
    """One expectation that a batch did not meet."""

    column: str | None  # None for a table-level expectation.
    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_between".
    observed: str  # Count and a few offending values.
    fix: str  # One sentence telling the sender what to change.
    row_level: bool = False  # True when removing the rows in row_indices would fix it.
    row_indices: tuple[int, ...] = ()  # 0-based positions of the offending rows.


@dataclass
class ValidationReport:
    """Outcome of validating one batch against a spec."""

    success: bool
    failures: list[ValidationFailure]
    row_count: int
    bad_row_indices: list[int]  # 0-based positions of rows that broke a row-level check.
    name: str = "batch"

    def message(self) -> str:
        """Describe the outcome: one line per failed column with its offending values and the fix."""
        if self.success:
            return f"Batch {self.name!r} met every expectation ({self.row_count} rows)."
        lines = [
            f"Batch {self.name!r} ({self.row_count} rows) failed "
            f"{len(self.failures)} expectation(s):"
        ]
        # A column that failed several expectations, e.g. a null and a value out of range, gets one line.
        by_column: dict[str | None, list[ValidationFailure]] = {}
        for failure in self.failures:
            if failure.column is None:
                lines.append(f"- table: {_describe_failure(failure)}")
            else:
                by_column.setdefault(failure.column, []).append(failure)
        for column, failures in by_column.items():
            lines.append(f"- column {column!r}: " + " ".join(_describe_failure(f) for f in failures))
        return "\n".join(lines)


def _describe_failure(failure: ValidationFailure) -> str:
    return f"{failure.expectation}: {failure.observed}. Fix: {failure.fix}"


# ---------------------------------------------------------------------------------------
# GX suite per spec


@dataclass
class _CompiledSuite:
    suite: ExpectationSuite
    batch_definition: BatchDefinition
    checks: dict[tuple[str, str | None], Expectation] = field(default_factory=dict)


_lock = threading.Lock()
_context: Any = None
_compiled: OrderedDict[str, _CompiledSuite] = OrderedDict()


def _gx_context() -> Any:
    """Return the process's ephemeral GX context, which keeps everything in memory."""
    global _context
    if _context is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.data_sources.add_pandas(_DATASOURCE_NAME)
        _context = context
    return _context


def _build_checks(spec: dict[str, Any]) -> dict[tuple[str, str | None], Expectation]:
    """Translate a spec into GX expectations keyed by (check kind, column)."""
    import great_expectations.expectations as gxe

    def meta(kind: str, column: str | None) -> dict[str, Any]:
        return {"mycelium_check": kind, "column": column}

    checks: dict[tuple[str, str | None], Expectation] = {
        ("columns", None): gxe.ExpectTableColumnsToMatchOrderedList(
            column_list=list(spec["columns"]), meta=meta("columns", None)
        ),
        ("row_count", None): gxe.ExpectTableRowCountToBeBetween(
            min_value=spec["min_row_count"], max_value=None, meta=meta("row_count", None)
        ),
    }
    for column, bounds in spec["features"].items():
        checks[("not_null", column)] = gxe.ExpectColumnValuesToNotBeNull(
            column=column, meta=meta("not_null", column)
        )
        checks[("numeric_type", column)] = gxe.ExpectColumnValuesToBeInTypeList(
            column=column, type_list=list(NUMERIC_DTYPES), meta=meta("numeric_type", column)
        )
        checks[("range", column)] = gxe.ExpectColumnValuesToBeBetween(
            column=column,
            min_value=bounds["min"],
            max_value=bounds["max"],
            meta=meta("range", column),
        )
    label_column = spec["label_column"]
    if label_column is not None:
        checks[("not_null", label_column)] = gxe.ExpectColumnValuesToNotBeNull(
            column=label_column, meta=meta("not_null", label_column)
        )
        checks[("label_set", label_column)] = gxe.ExpectColumnValuesToBeInSet(
            column=label_column,
            value_set=list(spec["label_values"]),
            meta=meta("label_set", label_column),
        )
    return checks


def _compiled_suite(spec: dict[str, Any]) -> _CompiledSuite:
    """Return the GX suite of ``spec``, building it on first use. Call with _lock held."""
    key = _spec_key(spec)
    cached = _compiled.get(key)
    if cached is not None:
        _compiled.move_to_end(key)
        return cached

    import great_expectations as gx

    context = _gx_context()
    datasource = context.data_sources.get(_DATASOURCE_NAME)
    name = f"spec-{key}"
    batch_definition = datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
        "whole-dataframe"
    )
    checks = _build_checks(spec)
    # The suite is registered complete in one call. Adding 196 expectations one by one to a
    # registered suite took about 10 s with GX 1.24.1 on a 2-core machine, this takes 0.3 s.
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=list(checks.values())))

    compiled = _CompiledSuite(suite=suite, batch_definition=batch_definition, checks=checks)
    _compiled[key] = compiled
    while len(_compiled) > _MAX_CACHED_SUITES:
        old_key, _ = _compiled.popitem(last=False)
        datasource.delete_asset(f"spec-{old_key}")
        context.suites.delete(f"spec-{old_key}")
    return compiled


# ---------------------------------------------------------------------------------------
# Validation


def spec_for_rows(spec: dict[str, Any], df: pd.DataFrame) -> dict[str, Any]:
    """Return ``spec`` without its label expectations when ``df`` has no label or a missing one.

    Unlabelled rows, such as requests to predict, are checked against the feature
    expectations only.
    """
    label = spec.get("label_column")
    if label is None or (label in df.columns and not df[label].isna().any()):
        return spec
    return {**spec, "columns": [c for c in spec["columns"] if c != label], "label_column": None,
            "label_values": None}


def spec_columns(df: pd.DataFrame, spec: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return the columns of ``df`` that ``spec`` checks, and ``spec_for_rows(spec, df)``.

    Other columns, such as an id or another domain's columns in a mixed file, are not the
    domain's inputs, so they are left out. A missing input column stays missing, so
    validation still fails on it.
    """
    spec = spec_for_rows(spec, df)
    return df[[column for column in spec["columns"] if column in df.columns]], spec


def validate_frame(df: pd.DataFrame, spec: dict[str, Any], *, name: str) -> ValidationReport:
    """Validate a batch against a spec with a Great Expectations suite.

    The suite first runs with GX's BOOLEAN_ONLY result format, which is fast. Only when an
    expectation fails do the failed ones run again with the COMPLETE format to collect
    the offending values and row positions.

    Args:
        df: the batch. Failures list bad rows by 0-based position, and messages show their index labels.
        spec: a spec from ``build_expectations``.
        name: the batch's name, used in messages and quarantine folders.

    Returns:
        The report. ``success`` is False when any expectation failed.

    Raises:
        EmptyDataError: if ``df`` has no rows. Empty data is never a pass.
        ConfigError: if ``spec`` is malformed.
    """
    _check_spec(spec)
    if len(df) == 0:
        raise EmptyDataError(
            f"Batch {name!r} has no rows, and empty data is never a pass. Check the upstream "
            f"query or file, and send at least {spec['min_row_count']} row(s)."
        )
    frame = df.reset_index(drop=True)

    import great_expectations as gx

    with _lock:
        compiled = _compiled_suite(spec)
        batch = compiled.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        summary = batch.validate(compiled.suite, result_format="BOOLEAN_ONLY")
        if summary.success:
            return ValidationReport(
                success=True, failures=[], row_count=len(frame), bad_row_indices=[], name=name
            )

        failed_keys = [_check_key(result) for result in summary.results if not result.success]
        failed_suite = gx.ExpectationSuite(
            name=f"{compiled.suite.name}-failed",
            expectations=[compiled.checks[key].copy(update={"id": None}) for key in failed_keys],
        )
        details = batch.validate(failed_suite, result_format="COMPLETE").results

    failures = _describe_failures(details, frame, spec, df.index)
    bad_rows = sorted({row for failure in failures for row in failure.row_indices})
    return ValidationReport(
        success=False,
        failures=failures,
        row_count=len(frame),
        bad_row_indices=bad_rows,
        name=name,
    )


def _check_key(result: ExpectationValidationResult) -> tuple[str, str | None]:
    meta = result.expectation_config.meta or {}
    return meta["mycelium_check"], meta["column"]


def _exception_message(result: ExpectationValidationResult) -> str | None:
    """Return the first line of the error GX caught while checking, if it caught one."""
    info = result.exception_info or {}
    # GX 1.24 stores either one record or a dict of records keyed by metric id.
    records = [info] if "raised_exception" in info else list(info.values())
    for record in records:
        if isinstance(record, dict) and record.get("raised_exception"):
            message = str(record.get("exception_message") or "unknown error")
            return message.strip().splitlines()[0] if message.strip() else "unknown error"
    return None


def _describe_failures(
    results: list[ExpectationValidationResult], frame: pd.DataFrame, spec: dict[str, Any], index: pd.Index
) -> list[ValidationFailure]:
    column_counts = frame.columns.value_counts()
    # A column that is not numeric also fails its range check, which cannot compare text with
    # the bounds. The type failure names the values, so the range failure is left out.
    not_numeric = {column for kind, column in map(_check_key, results) if kind == "numeric_type"}
    failures = []
    for result in results:
        kind, column = _check_key(result)
        if column is not None and column_counts.get(column, 0) != 1:
            continue  # The column-list failure already names a missing or duplicated column.
        if kind == "range" and column in not_numeric:
            continue
        failures.append(_describe(kind, column, result, frame, spec, index))
    return failures


def _describe(
    kind: str,
    column: str | None,
    result: ExpectationValidationResult,
    frame: pd.DataFrame,
    spec: dict[str, Any],
    index: pd.Index,
) -> ValidationFailure:
    expectation = result.expectation_config.type
    error = _exception_message(result)

    if kind == "columns":
        return ValidationFailure(
            column=None,
            expectation=expectation,
            observed=_describe_columns(list(frame.columns), list(spec["columns"])),
            fix=(
                "Send exactly the expected columns in the expected order, for example "
                "df[expected_columns] after adding the missing ones."
            ),
        )
    if kind == "row_count":
        return ValidationFailure(
            column=None,
            expectation=expectation,
            observed=f"{len(frame)} rows, expected at least {spec['min_row_count']}",
            fix=f"Send batches of at least {spec['min_row_count']} rows.",
        )
    if kind == "numeric_type":
        return _describe_not_numeric(column, expectation, frame, index)
    if error is not None:
        return ValidationFailure(
            column=column,
            expectation=expectation,
            observed=f"dtype {frame[column].dtype}, check raised: {error}; "
            f"first values {_format_values(frame[column].head(_MAX_SHOWN_VALUES))}",
            fix=f"Convert {column!r} to numbers, for example with pd.to_numeric(df[{column!r}]).",
        )

    rows = _unexpected_rows(kind, column, result, frame, spec)
    text_labels = kind not in ("not_null", "range") and frame[column].dtype == object
    if text_labels:
        # One text label makes a CSV reader load the whole column as text, and then a label
        # such as '6' is not in the set either. Only the values that are no known class as numbers count.
        numbers = pd.to_numeric(frame[column], errors="coerce")
        unknown = frame[column].notna() & ~numbers.isin(spec["label_values"])
        rows = tuple(int(row) for row in np.flatnonzero(unknown.to_numpy())) or rows
    values = frame[column].iloc[list(rows)]
    count = f"{len(rows)} of {len(frame)} rows"
    # The caller's index labels, which for `mycelium route` are the rows' 0-based numbers in the file.
    shown_rows = _format_values(list(index[list(rows[:_MAX_SHOWN_VALUES])]))
    if kind == "not_null":
        observed = f"{count} are null (rows with index {shown_rows})"
        fix = f"Fill in {column!r} or remove those rows before sending the batch."
    elif kind == "range":
        bounds = spec["features"][column]
        observed = (
            f"{count} outside [{bounds['min']!r}, {bounds['max']!r}]: "
            f"{_format_values(values.unique()[:_MAX_SHOWN_VALUES])} (rows with index {shown_rows})"
        )
        fix = (
            f"Correct those values of {column!r}, or rebuild the expectations from reference "
            "data that covers the new range if the values are valid."
        )
    else:
        observed = (
            f"{count} not in {_format_values(spec['label_values'])}: "
            f"{_format_values(values.unique()[:_MAX_SHOWN_VALUES])} (rows with index {shown_rows})"
        )
        fix = f"Code {column!r} with the domain's known classes, or register the new classes."
        if text_labels:
            fix += f" The column is text ({frame[column].dtype}), so the other values must be class numbers too."
    return ValidationFailure(
        column=column,
        expectation=expectation,
        observed=observed,
        fix=fix,
        row_level=True,
        row_indices=rows,
    )


def _describe_not_numeric(
    column: str, expectation: str, frame: pd.DataFrame, index: pd.Index
) -> ValidationFailure:
    """Describe a column whose dtype is not numeric, naming the values that are not numbers.

    One text value makes a CSV reader load the whole column as text, so the other values of
    the column look like numbers written as text.
    """
    values = frame[column]
    if pd.api.types.is_bool_dtype(values):
        text = pd.Series(False, index=values.index)
    else:
        text = values.notna() & pd.to_numeric(values, errors="coerce").isna()
    rows = np.flatnonzero(text.to_numpy())
    if len(rows) == 0:
        return ValidationFailure(
            column=column,
            expectation=expectation,
            observed=f"dtype {values.dtype}, first values {_format_values(values.head(_MAX_SHOWN_VALUES))}",
            fix=f"Convert {column!r} to numbers, for example with pd.to_numeric(df[{column!r}]).",
        )
    shown_rows = _format_values(list(index[rows[:_MAX_SHOWN_VALUES]]))
    shown_values = _format_values(values.iloc[rows].unique()[:_MAX_SHOWN_VALUES])
    return ValidationFailure(
        column=column,
        expectation=expectation,
        observed=(
            f"{len(rows)} of {len(frame)} rows are not numbers: {shown_values} "
            f"(rows with index {shown_rows}), so the column has dtype {values.dtype}"
        ),
        fix=f"Replace those values of {column!r} with numbers, or remove those rows.",
    )


def _unexpected_rows(
    kind: str,
    column: str,
    result: ExpectationValidationResult,
    frame: pd.DataFrame,
    spec: dict[str, Any],
) -> tuple[int, ...]:
    """Return the offending row positions, from GX's result when it lists them."""
    listed = (result.result or {}).get("unexpected_index_list")
    if listed is not None:
        return tuple(sorted(int(row) for row in listed))

    values = frame[column]
    if kind == "not_null":
        bad = values.isna()
    elif kind == "range":
        bounds = spec["features"][column]
        bad = values.notna() & ~values.between(bounds["min"], bounds["max"])
    else:
        bad = values.notna() & ~values.isin(spec["label_values"])
    return tuple(int(row) for row in np.flatnonzero(bad.to_numpy()))


def _describe_columns(found: list[Any], expected: list[str]) -> str:
    missing = [column for column in expected if column not in found]
    extra = [column for column in found if column not in expected]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"unexpected columns {extra}")
    if not parts:
        duplicated = sorted({str(c) for c in found if found.count(c) > 1})
        if duplicated:
            parts.append(f"duplicated columns {duplicated}")
        else:
            parts.append(f"columns in the order {found}, expected {expected}")
    return "; ".join(parts)


def _format_values(values: Any) -> str:
    shown = ["null" if pd.isna(value) else repr(_plain(value)) for value in values]
    return ", ".join(shown) if shown else "none"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------------------
# Gates


def _reject(
    df: pd.DataFrame, report: ValidationReport, *, name: str, quarantine_dir: Path
) -> DataValidationError:
    path = quarantine_batch(df, name=name, reason=report.message(), quarantine_dir=quarantine_dir)
    return DataValidationError(
        f"{report.message()}\nAll {len(df)} rows of {name!r} were quarantined in {path}.",
        quarantine_path=str(path),
    )


def require_valid(
    df: pd.DataFrame,
    spec: dict[str, Any],
    *,
    name: str,
    quarantine_dir: Path,
    quarantine_rows: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Return ``df`` if it meets ``spec``, or quarantine the whole batch and raise.

    Args:
        quarantine_rows: the rows to quarantine when ``df`` fails, by default ``df``. Pass
            the rows with every column as given when ``df`` contains only the spec's columns.

    Raises:
        DataValidationError: if any expectation failed. ``quarantine_path`` is the folder
            that contains the batch.
        EmptyDataError: if ``df`` has no rows. Nothing is quarantined then.
    """
    report = validate_frame(df, spec, name=name)
    if report.success:
        return df
    rejected = df if quarantine_rows is None else quarantine_rows
    raise _reject(rejected, report, name=name, quarantine_dir=quarantine_dir)


def split_valid_rows(
    df: pd.DataFrame, spec: dict[str, Any], *, name: str, quarantine_dir: Path
) -> tuple[pd.DataFrame, ValidationReport]:
    """Quarantine the rows that break a row-level expectation and return the rest.

    Row-level expectations are not-null, value range and label set. The returned frame
    keeps the original index of the remaining rows.

    Returns:
        The valid rows and the report of the whole batch.

    Raises:
        DataValidationError: if a table-level expectation failed (columns, dtypes, row
            count). The whole batch is quarantined then, as in ``require_valid``.
        EmptyDataError: if ``df`` has no rows, or if every row was quarantined
            (``quarantine_path`` is set then).
    """
    report = validate_frame(df, spec, name=name)
    if report.success:
        return df, report
    if any(not failure.row_level for failure in report.failures):
        raise _reject(df, report, name=name, quarantine_dir=quarantine_dir)

    bad = report.bad_row_indices
    path = quarantine_batch(
        df.iloc[bad], name=name, reason=report.message(), quarantine_dir=quarantine_dir
    )
    keep = np.ones(len(df), dtype=bool)
    keep[bad] = False
    valid = df[keep]
    logger.warning(
        "Quarantined %d of %d rows of batch %r that broke row-level expectations, in %s",
        len(bad),
        len(df),
        name,
        path,
    )
    if len(valid) == 0:
        raise EmptyDataError(
            f"{report.message()}\nEvery row of batch {name!r} broke an expectation, so no "
            f"data is left. The rows were quarantined in {path}.",
            quarantine_path=str(path),
        )
    return valid, report
