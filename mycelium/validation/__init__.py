"""Validation gates: every batch is checked against its domain's data expectations with
Great Expectations, and rejected rows are quarantined with the reason, never dropped."""

from mycelium.validation.expectations import (
    NUMERIC_DTYPES,
    ValidationFailure,
    ValidationReport,
    build_expectations,
    require_valid,
    split_valid_rows,
    validate_frame,
)
from mycelium.validation.quarantine import list_quarantine, quarantine_batch

__all__ = [
    "NUMERIC_DTYPES",
    "ValidationFailure",
    "ValidationReport",
    "build_expectations",
    "list_quarantine",
    "quarantine_batch",
    "require_valid",
    "split_valid_rows",
    "validate_frame",
]
