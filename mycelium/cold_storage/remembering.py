"""Remembering: restore a cold subgraph, fine-tune it if the data moved, and gate it before serving."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mycelium.cold_storage.bundle import LoadedBundle, read_bundle
from mycelium.cold_storage.smote import oversample
from mycelium.cold_storage.store import ColdStore
from mycelium.config import Params
from mycelium.drift.base import DriftStatus
from mycelium.drift.feature_drift import FeatureDriftTest
from mycelium.errors import ConfigError, IntegrityError, StorageError
from mycelium.events import EventLog
from mycelium.experts.training import fit
from mycelium.subgraph import Subgraph
from mycelium.validation.expectations import ValidationReport, spec_columns, validate_frame

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

LABEL = "label"


@dataclass
class RememberResult:
    """Outcome of one Remembering: the gate's numbers and, when it passed, the subgraph to serve.

    Accuracies are measured on the bundle's held-out buffer rows. ``recorded_accuracy`` is
    the FP32 model's when it was frozen, ``restored_accuracy`` the dequantized model's and
    ``finetuned_accuracy`` the fine-tuned copy's (None when no fine-tune ran).
    ``gate_accuracy`` belongs to the model the gate judged last, which is served when
    ``passed``. ``finetuned`` is True only when the served model is the fine-tuned one,
    because a fine-tune that fails the gate falls back to the restored model, as
    ``finetune_note`` records. ``restore_seconds`` covers checkout, hash checks,
    dequantization and building the subgraph. ``waited_seconds`` is the time spent waiting
    for another process that held the domain's lock. ``expectations_failures`` names each
    column of the recent rows that broke an expectation, with its offending values.
    """

    domain: str
    passed: bool
    reason: str
    bundle_version: str | None = None
    restore_seconds: float | None = None
    finetuned: bool = False
    finetune_note: str = ""
    recorded_accuracy: float | None = None
    restored_accuracy: float | None = None
    finetuned_accuracy: float | None = None
    gate_accuracy: float | None = None
    expectations_passed: bool | None = None
    expectations_failures: list[str] = field(default_factory=list)
    skipped_versions: list[str] = field(default_factory=list)
    waited_seconds: float = 0.0
    subgraph: Subgraph | None = None

    def summary(self) -> dict[str, Any]:
        """Return the result without the subgraph, for events and artifacts."""
        return {k: v for k, v in self.__dict__.items() if k not in ("subgraph", "domain")}


def buffer_accuracy(subgraph: Subgraph, frame: pd.DataFrame) -> float:
    """Return the accuracy of ``subgraph`` on labelled buffer rows.

    A buffer mixes the regimes of every chain depth, so each row is served by its own depth.
    """
    return float((subgraph.predict(frame, per_row=True).labels == frame[LABEL].to_numpy()).mean())


def _load_newest_intact(
    store: ColdStore, domain: str, versions: Sequence[str], events: EventLog | None, step: int
) -> tuple[str, LoadedBundle, list[str]]:
    """Check out and verify versions newest first; return the first intact one."""
    skipped = []
    for version in versions:
        try:
            return version, read_bundle(store.checkout(domain, version)), skipped
        except (IntegrityError, StorageError) as exc:
            skipped.append(version)
            logger.warning("Bundle %s %s is unusable, trying an older version: %s", domain, version, exc)
            if events:
                events.emit("bundle_rejected", step=step, domain=domain, version=version, error=str(exc))
    raise StorageError(
        f"No intact bundle of {domain!r} among versions {list(versions)}; "
        "check the DVC remote with `dvc status -c` in the cold store."
    )


def _inputs_moved(buffer: pd.DataFrame, recent: pd.DataFrame, params: Params, columns: list[str]) -> tuple[bool, str]:
    """Return whether ``recent`` differs from the buffer's distribution, and why."""
    window = len(recent)
    if window < params.drift.min_window:
        return False, f"{window} recent rows are too few to compare (min_window={params.drift.min_window})"
    try:
        test = FeatureDriftTest(
            buffer[columns].to_numpy(dtype=float),
            feature_names=columns,
            min_window=params.drift.min_window,
            alpha=params.drift.alpha,
            window_size=window,
            quantile=params.drift.quantile,
            margin=params.drift.margin,
            seed=params.seed,
        )
    except ConfigError as exc:
        return False, f"buffer too small to compare against: {exc}"
    result = test.test(recent[columns].to_numpy(dtype=float))
    moved = result.status is DriftStatus.DRIFT
    return moved, f"recent inputs vs buffer: {result.status.value} (score {result.score}, threshold {result.threshold})"


def _validate_recent(recent: pd.DataFrame, expectations: dict[str, Any], domain: str) -> ValidationReport:
    """Validate the recent rows on the domain's input columns and label only, as serving does."""
    rows, spec = spec_columns(recent, expectations)
    return validate_frame(rows, spec, name=f"{domain}:recent")


def _describe_failures(report: ValidationReport) -> list[str]:
    """Return one line per failed expectation: the column, the expectation and the offending values."""
    return [
        f"{'table' if failure.column is None else f'column {failure.column!r}'} "
        f"{failure.expectation}: {failure.observed}"
        for failure in report.failures
    ]


def _finetune(subgraph: Subgraph, rows: pd.DataFrame, loaded: LoadedBundle, params: Params) -> tuple[Subgraph | None, str]:
    """Fine-tune a copy at a low learning rate on buffer rows plus SMOTE rows.

    Only the newest patch trains when the domain has patches, else the expert; the original
    stays untouched so the gate can compare the two. Returns (None, why) when no fine-tune ran.
    """
    settings = params.remembering
    if settings.finetune_steps == 0:
        return None, "fine-tune disabled (remembering.finetune_steps is 0)"
    columns = list(subgraph.schema.columns)
    oversampled = oversample(rows[columns].to_numpy(dtype=float), rows[LABEL].to_numpy(), loaded.smote,
                             seed=params.seed)
    if oversampled.skipped_reason:
        return None, oversampled.skipped_reason
    candidate = copy.deepcopy(subgraph)
    trainable = candidate.patches[-1] if candidate.patches else candidate.expert
    for parameter in trainable.parameters():
        parameter.requires_grad_(True)
    x = candidate.schema.transform(oversampled.X)
    y = torch.as_tensor(oversampled.y, dtype=torch.long)
    fit(candidate.module, x, y, epochs=settings.finetune_steps, lr=settings.finetune_lr, batch_size=len(x),
        seed=params.seed, parameters=trainable.parameters())
    for parameter in candidate.expert.parameters():
        parameter.requires_grad_(False)
    return candidate, f"fine-tuned {settings.finetune_steps} steps on {len(x)} rows ({len(x) - len(rows)} from SMOTE)"


def _gate_failures(accuracy: float, result: RememberResult, tolerance: float) -> list[str]:
    """Return why a model with held-out ``accuracy`` fails the gate; empty when it passes."""
    failures = []
    if result.expectations_passed is False:
        failures.append(f"recent inputs break the data expectations: {'; '.join(result.expectations_failures)}")
    if not np.isfinite(accuracy) or accuracy < result.recorded_accuracy - tolerance:
        failures.append(
            f"held-out buffer accuracy {accuracy:.3f} is more than {tolerance:.3f} below "
            f"the recorded {result.recorded_accuracy:.3f}"
        )
    return failures


def restore_and_gate(
    store: ColdStore,
    domain: str,
    versions: Sequence[str],
    recent: pd.DataFrame | None,
    params: Params,
    *,
    events: EventLog | None = None,
    step: int = 0,
) -> RememberResult:
    """Restore the first intact bundle of ``versions`` (newest first) and run the validation gate.

    A version whose files fail their md5 or sha256 check, here and on the DVC remote, is
    skipped with a ``bundle_rejected`` event, and the next one is tried.

    The gate passes a model when the recent inputs meet the bundle's data expectations on the
    domain's input columns and label (other columns are ignored, as in serving), and its
    accuracy on the held-out buffer rows is at most ``remembering.gate_tolerance`` below the
    accuracy recorded before the domain was frozen. When the recent inputs moved away
    from the buffer, a fine-tuned copy is judged first. It is rejected when it fails the gate
    or lowers the restored model's accuracy by more than the tolerance (forgetting). The
    restored model is then judged instead, and served if it passes.
    """
    started = time.perf_counter()
    try:
        version, loaded, skipped = _load_newest_intact(store, domain, versions, events, step)
    except StorageError as exc:
        return RememberResult(domain, False, str(exc), skipped_versions=list(versions))
    restored = Subgraph.from_parts(loaded.metadata["subgraph"], loaded.state_dict, loaded.references)
    restore_seconds = time.perf_counter() - started
    result = RememberResult(domain, False, "", version, restore_seconds, skipped_versions=skipped)
    if events:
        events.emit("bundle_loaded", step=step, domain=domain, version=version, restore_seconds=restore_seconds)

    buffer = loaded.buffer
    holdout_rows = loaded.metadata["holdout_rows"]
    holdout = buffer.iloc[holdout_rows]
    tune = buffer.drop(index=buffer.index[holdout_rows])
    result.recorded_accuracy = float(loaded.metadata["metrics"]["buffer_holdout_accuracy_fp32"])
    result.restored_accuracy = buffer_accuracy(restored, holdout)

    tuned = None
    columns = list(restored.schema.columns)
    if recent is None:
        result.finetune_note = "no recent inputs given; fine-tune skipped"
    else:
        report = _validate_recent(recent, loaded.expectations, domain)
        result.expectations_passed = report.success
        result.expectations_failures = _describe_failures(report)
        result.finetune_note = "recent inputs break the data expectations; fine-tune skipped"
    if result.expectations_passed:
        moved, why = _inputs_moved(tune, recent, params, columns)
        result.finetune_note = why
        if moved:
            tuned, note = _finetune(restored, tune, loaded, params)
            result.finetune_note = f"{why}; {note}"

    tolerance = params.remembering.gate_tolerance
    if tuned is not None:
        result.finetuned_accuracy = result.gate_accuracy = buffer_accuracy(tuned, holdout)
        failures = _gate_failures(result.finetuned_accuracy, result, tolerance)
        if result.finetuned_accuracy < result.restored_accuracy - tolerance:
            failures.append(
                f"fine-tuning lowered held-out accuracy from {result.restored_accuracy:.3f} "
                f"to {result.finetuned_accuracy:.3f}"
            )
        if not failures:
            return _passed(result, tuned, finetuned=True, tolerance=tolerance)
        result.finetune_note += f"; fine-tuned model rejected ({'; '.join(failures)})"
        logger.warning("Remembering %s: fine-tuned model rejected, judging the restored one: %s", domain, failures)

    result.gate_accuracy = result.restored_accuracy
    failures = _gate_failures(result.restored_accuracy, result, tolerance)
    if failures:
        result.reason = "; ".join(failures)
        return result
    if tuned is not None:
        result.finetune_note += "; serving the restored model"
    return _passed(result, restored, finetuned=False, tolerance=tolerance)


def _passed(result: RememberResult, subgraph: Subgraph, *, finetuned: bool, tolerance: float) -> RememberResult:
    result.passed, result.finetuned, result.subgraph = True, finetuned, subgraph
    result.reason = (
        f"accuracy {result.gate_accuracy:.3f} vs recorded {result.recorded_accuracy:.3f} (tolerance {tolerance})"
    )
    return result
