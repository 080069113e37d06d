"""The Mycelium runtime: route batches, detect drift, patch, discover domains, sweep and remember.

Flows and pipeline stages call this class. It contains no Prefect or DVC-stage logic.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from mycelium.cold_storage.bundle import read_bundle, write_bundle
from mycelium.cold_storage.remembering import RememberResult, buffer_accuracy, restore_and_gate
from mycelium.cold_storage.smote import balanced_buffer, smote_settings
from mycelium.cold_storage.store import ColdStore, StoredVersion
from mycelium.cold_storage.policy import select_evictions
from mycelium.cold_storage.quantize import dequantize_state_dict, quantize_state_dict
from mycelium.cold_storage.sweep import Eviction, SweepCandidate, keep_reason
from mycelium.config import Params
from mycelium.drift.feature_drift import FeatureDriftResult
from mycelium.drift.adwin import ADWIN
from mycelium.drift.page_hinkley import PageHinkley
from mycelium.drift.performance import PerformanceMonitor
from mycelium.drift.policy import Action, Decision, DomainSignals, decide
from mycelium.drift.reference import ReferenceMonitor
from mycelium.errors import (
    DataValidationError,
    DomainBusyError,
    EmptyDataError,
    IllegalTransitionError,
    InputError,
    PatchRejectedError,
    RememberTimeoutError,
    RoutingError,
    StorageError,
    one_line,
)
from mycelium.events import EventLog
from mycelium.experts.fitting import LABEL, feature_columns, train_expert
from mycelium.patches.training import PatchReport, train_patch
from mycelium.routing.batch import (
    chain_inputs,
    chained_request_domain,
    failed_restore_error,
    unused_columns_clause,
    untagged_chained_reason,
)
from mycelium.routing.chains import UpstreamInput
from mycelium.routing.chained import StageRecord, compute_inputs, schema_columns, subgraph_server
from mycelium.routing.controller import DomainRecord, MetaController
from mycelium.routing.lifecycle import State
from mycelium.routing.table import RoutingTable
from mycelium.routing.tags import safe_name
from mycelium.subgraph import Subgraph, load_subgraph, save_subgraph
from mycelium.validation.expectations import require_valid
from mycelium.validation.finite import non_finite_columns
from mycelium.validation.quarantine import quarantine_batch

logger = logging.getLogger(__name__)

# Recent labelled rows kept per domain; the cold-storage buffer is drawn from them.
RESERVOIR_ROWS = 2000


@dataclass
class BatchResult:
    """Outcome of one batch: its domain and version, its accuracy, the chain depths used and the actions."""

    step: int
    domain: str | None
    version: int | None
    state: str | None
    rows: int
    accuracy: float | None = None
    depth_counts: dict[int, int] = field(default_factory=dict)
    decision: dict[str, Any] | None = None
    actions: list[str] = field(default_factory=list)
    # For a chained domain: each stage's slot, domain, version, patches and depth counts, upstream first.
    stages: list[dict[str, Any]] = field(default_factory=list)


class Mycelium:
    """One Mycelium deployment rooted at ``params.paths.run``.

    Args:
        params: validated settings.
        clock: returns the current time in seconds; the stream replay passes a simulated clock.
        events: where events go; by default ``<run>/events.jsonl``.
        defer_actions: when True, ``ingest`` does not train patches, train new experts or
            restore cold domains itself. It saves the rows the action needs to a file and emits
            a ``drift_detected``, ``new_domain_detected`` or ``cold_domain_requested`` event
            with that file's path, for an orchestrator to run the action in another process.
    """

    def __init__(self, params: Params, *, clock: Callable[[], float] = time.time, events: EventLog | None = None,
                 defer_actions: bool = False):
        self.params = params
        self.root = params.paths.run
        self.clock = clock
        self.defer_actions = defer_actions
        self.events = events or EventLog(self.root / "events.jsonl")
        self.controller = MetaController(routing_directory(params), clock=clock,
                                         activity_half_life_s=params.cold_storage.max_idle_s)
        self.step = 0
        self._store: ColdStore | None = None
        self._hot: dict[str, Subgraph] = {}
        self._locks: dict[str, FileLock] = {}
        # The model_dir each subgraph in _hot was loaded from; None until checked against the table.
        self._hot_dirs: dict[str, str | None] = {}
        self._monitors: dict[str, ReferenceMonitor] = {}
        self._performance: dict[str, PerformanceMonitor] = {}
        self._drift_rows: dict[str, list[pd.DataFrame]] = {}
        self._last_window: dict[str, FeatureDriftResult] = {}
        # Cold domains this instance has requested once; later batches only wait in pending/.
        self._remembering_requested: set[str] = set()

    # Paths and handles -----------------------------------------------------------------

    @property
    def store(self) -> ColdStore:
        if self._store is None:
            remote = self.params.cold_storage.remote_url or self.params.paths.remote
            self._store = ColdStore(self.params.paths.cold_store, remote)
        return self._store

    def _folder(self, kind: str, domain: str) -> Path:
        return self.root / kind / safe_name(domain)

    # Registration ------------------------------------------------------------------------

    def register(
        self,
        subgraph: Subgraph,
        *,
        tags: list[str],
        reference: pd.DataFrame,
        reason: str,
        upstream: list[UpstreamInput | dict[str, Any]] | None = None,
    ) -> DomainRecord:
        """Register a freshly trained subgraph under ``tags`` and make it hot.

        ``reference`` is the labelled training data: drift tests compare windows against it and
        it seeds the replay reservoir from which the cold-storage buffer is drawn. ``upstream``
        declares a chained domain's inputs; its ``reference`` is then in the expert's input
        columns (the upstream outputs, e.g. from ``chain_features``), not in the request format.
        """
        domain = subgraph.domain
        missing = [column for column in subgraph.schema.columns if column not in reference.columns]
        if missing:
            raise InputError(
                f"The reference data of {domain!r} lacks its input columns {missing[:5]}; pass the expert's "
                "training rows (for a chained domain: the upstream outputs, not the request columns)."
            )
        model_dir = self._save_hot_copy(subgraph, version=1)
        record = DomainRecord(
            name=domain,
            tags=tags,
            version=1,
            architecture=subgraph.expert.architecture,
            n_params=subgraph.n_parameters(),
            fp32_bytes=subgraph.fp32_bytes(),
            model_dir=model_dir,
            columns=list(subgraph.schema.columns),
            metrics={"holdout_accuracy": subgraph.info.get("holdout_accuracy")},
            upstream=list(upstream or []),
        )
        self.controller.register(record, reason=reason)
        record = self.controller.set_state(domain, State.HOT, reason="trained and saved")
        # Registration counts as the last use, so a sweep does not take a domain that has had no
        # request yet for one idle since 1970.
        self.controller.record_use(domain, 0)
        self.controller.flush_locality()
        self._hot[domain] = subgraph
        self._hot_dirs[domain] = None
        self._save_reference(domain, 0, reference)
        self._append_reservoir(domain, reference)
        self.events.emit("domain_registered", step=self.step, domain=domain, tags=record.tags, reason=reason,
                         architecture=record.architecture, n_params=record.n_params,
                         holdout_accuracy=subgraph.info.get("holdout_accuracy"))
        return record

    def _unused_version(self, domain: str, record: DomainRecord) -> int:
        """Return the next subgraph version of ``domain`` that no record in its history has used.

        After a rollback the record's version is lower than versions already used, and reusing
        one would give two different models one number (and one hot copy folder).
        """
        used = [c["current"]["version"] for c in self.controller.history(domain) if c.get("current")]
        return max([record.version, *used]) + 1

    def _save_hot_copy(self, subgraph: Subgraph, *, version: int) -> str:
        folder = self._folder("models", subgraph.domain) / f"v{version:04d}"
        save_subgraph(subgraph, folder)
        return str(folder.relative_to(self.root))

    def subgraph(self, domain: str) -> Subgraph:
        """Return the hot subgraph of ``domain``, loading its hot copy if needed.

        The copy in memory is reloaded when the routing table points the domain at another hot
        copy, for example after a rollback.
        """
        record = self.controller.domain(domain)
        if domain in self._hot and self._hot_dirs.get(domain) in (None, record.model_dir):
            self._hot_dirs[domain] = record.model_dir
            return self._hot[domain]
        if record.state != State.HOT.value or record.model_dir is None:
            raise RoutingError(f"Domain {domain!r} is {record.state}, not hot; restore it first with "
                               f"`mycelium remember {domain}` (in Python: Mycelium.remember({domain!r})).")
        self._hot[domain] = load_subgraph(self.root / record.model_dir)
        self._hot_dirs[domain] = record.model_dir
        return self._hot[domain]

    # Ingestion ---------------------------------------------------------------------------

    def ingest(self, batch: pd.DataFrame, tag: str | None = None, *, name: str | None = None) -> BatchResult:
        """Route one batch, serve it, run detection and carry out the decided action.

        A batch that fails validation is quarantined and DataValidationError is raised; rows
        that no domain accepts go to the new-domain queue. A batch for a chained domain carries
        each upstream slot's input as prefixed columns (``a.px_00``): the upstream stages run
        first, and the domain's own detection, patches and reservoir then work on their
        outputs. Chained batches must be tagged, because inference matches a batch's columns
        against a domain's own input columns. An untagged batch whose columns are a chained
        domain's request columns is quarantined, and DataValidationError names the tag to use.
        """
        self.step += 1
        name = name or f"step-{self.step:05d}"
        if len(batch) == 0:
            raise EmptyDataError(f"Batch {name!r} has no rows; there is nothing to route.")
        if tag is not None:
            domain, evidence = self.controller.resolve(tag).name, {"tag": tag}
        else:
            self._reject_untagged_chained(batch, name)
            self._require_finite(batch, name)
            domain, evidence = self.infer_domain(batch)
            if domain is None:
                return self._queue_unknown(batch, evidence, name)

        record = self.controller.domain(domain)
        actions: list[str] = []
        if record.state in (State.COLD.value, State.REMEMBERING.value) and self.defer_actions:
            return self._request_remembering(record, batch, name)
        # Hot again: the next time it goes cold, its first batch requests a restore again.
        self._remembering_requested.discard(domain)
        upstream: list[StageRecord] = []
        if domain in self.controller.table.upstream:
            chained = chain_inputs(self, domain, batch, validate=True, name=name)
            batch, upstream = chained.frame, chained.stages
        if record.state in (State.COLD.value, State.REMEMBERING.value):
            # A request during another process's Remembering waits for it on the domain's lock.
            result = self.remember(domain, recent=batch)
            actions.append("remembered" if result.passed else "remember_failed")
            if not result.passed:
                path = quarantine_batch(batch, name=name, reason=f"domain {domain} failed its validation gate",
                                        quarantine_dir=self.params.paths.quarantine)
                raise failed_restore_error(result, len(batch), name, kept=path)
        subgraph = self.subgraph(domain)
        served_by = self.controller.domain(domain)
        try:
            require_valid(batch, subgraph.info["expectations"], name=f"{domain}:{name}",
                          quarantine_dir=self.params.paths.quarantine)
        except DataValidationError as exc:
            self.events.emit("batch_quarantined", step=self.step, domain=domain, batch=name,
                             path=exc.quarantine_path, reason=one_line(exc))
            raise

        prediction = subgraph.predict(batch)
        accuracy = None
        if LABEL in batch:
            accuracy = float((prediction.labels == batch[LABEL].to_numpy()).mean())
        self.controller.record_use(domain, len(batch))
        self.controller.flush_locality()
        self._append_reservoir(domain, batch)

        decision = self._detect(domain, subgraph, batch, prediction.labels)
        if decision.action is Action.PATCH and self.defer_actions:
            self._request_patch(domain)
            actions.append("patch_requested")
        elif decision.action is Action.PATCH:
            try:
                self.train_patch(domain)
                actions.append("patched")
            except PatchRejectedError as exc:
                # The batch itself was served; the rejected patch's rows are on disk (exc.data_path).
                logger.warning("%s", exc)
                actions.append("patch_rejected")
        depth_counts = {int(d): int(c) for d, c in zip(*np.unique(prediction.depth, return_counts=True))}
        stages = []
        if upstream:
            served = StageRecord("(requested)", domain, served_by.version, tuple(served_by.patches), prediction.depth)
            stages = [stage.summary() for stage in [*upstream, served]]
        record = self.controller.domain(domain)
        self.events.emit("batch_routed", step=self.step, time=self.clock(), batch=name, domain=domain,
                         version=record.version, state=record.state, rows=len(batch), accuracy=accuracy,
                         depth_counts=depth_counts, routing=evidence, decision=decision.to_dict(), stages=stages)
        return BatchResult(self.step, domain, record.version, record.state, len(batch), accuracy,
                           depth_counts, decision.to_dict(), actions, stages)

    def _reject_untagged_chained(self, batch: pd.DataFrame, name: str) -> None:
        """Quarantine an untagged batch in the request format of a chained domain.

        Inference would find no domain for its slot-prefixed columns and queue it, so a
        duplicate expert would be trained on the raw upstream inputs.
        """
        domain = chained_request_domain(self, list(batch.columns))
        if domain is None:
            return
        reason = untagged_chained_reason(domain)
        path = quarantine_batch(batch, name=name, reason=reason, quarantine_dir=self.params.paths.quarantine)
        self.events.emit("batch_quarantined", step=self.step, domain=None, batch=name, path=path, reason=reason)
        raise DataValidationError(
            f"Untagged batch {name!r} cannot be routed: {reason}. It was quarantined in {path}; "
            f"send it again with tag {domain!r}.",
            quarantine_path=str(path),
        )

    def _require_finite(self, batch: pd.DataFrame, name: str) -> None:
        """Quarantine an untagged batch whose features are not all finite numbers or whose labels
        are not class indices.

        Untagged batches have no domain expectations yet, but the OOD scores need finite numbers
        and a new expert trained on the queue needs valid labels.
        """
        problems = [
            f"column {found.column!r} has {len(found.positions)} NaN or infinite values" if found.numeric
            else f"column {found.column!r} is {found.dtype}, not numeric"
            for found in non_finite_columns(batch.drop(columns=[LABEL], errors="ignore"))
        ]
        if LABEL in batch:
            labels = pd.to_numeric(batch[LABEL], errors="coerce")
            invalid = batch[LABEL][~(labels.notna() & (labels >= 0) & (labels % 1 == 0))]
            if len(invalid):
                problems.append(f"column {LABEL!r} has {len(invalid)} values that are not class indices >= 0, "
                                f"e.g. {invalid.iloc[:3].tolist()}")
        if not problems:
            return
        reason = "; ".join(problems)
        path = quarantine_batch(batch, name=name, reason=reason, quarantine_dir=self.params.paths.quarantine)
        self.events.emit("batch_quarantined", step=self.step, domain=None, batch=name, path=path, reason=reason)
        raise DataValidationError(
            f"Untagged batch {name!r} cannot be routed: {reason}. It was quarantined in {path}; "
            "fix or drop those values and send it again.",
            quarantine_path=str(path),
        )

    def infer_domain(self, batch: pd.DataFrame) -> tuple[str | None, dict[str, Any]]:
        """Pick the domain whose schema matches and whose OOD check accepts most rows.

        Hot domains are scored first. When none accepts the batch, cold domains with the same
        schema are remembered (restored through the gate) and scored too, so a returning source
        reactivates its expert instead of training a duplicate. Returns (None, evidence) when no
        domain accepts at least ``ood.min_accepted_fraction`` of the rows.
        """
        columns = [c for c in batch.columns if c != LABEL]
        scores = self._acceptance(batch, columns, State.HOT)
        reactivated = []
        if not scores or max(scores.values()) < self.params.ood.min_accepted_fraction:
            for name in self._same_schema(columns, State.COLD):
                self.events.emit("reactivating_for_inference", step=self.step, domain=name,
                                 reason="an untagged batch with this domain's schema matched no hot domain")
                if self.remember(name).passed:
                    reactivated.append(name)
            scores.update(self._acceptance(batch, columns, State.HOT, only=reactivated))
        evidence: dict[str, Any] = {"tag": None, "accepted_fraction": scores, "reactivated": reactivated}
        if not scores:
            evidence["reason"] = f"no hot domain has this schema ({len(columns)} columns: {columns[:5]}...)"
            return None, evidence
        best = max(scores, key=scores.get)
        if scores[best] < self.params.ood.min_accepted_fraction:
            evidence["reason"] = (
                f"best domain {best!r} accepts {scores[best]:.0%} of rows, below "
                f"min_accepted_fraction={self.params.ood.min_accepted_fraction:.0%}"
            )
            return None, evidence
        evidence["reason"] = f"{best!r} accepts {scores[best]:.0%} of rows"
        return best, evidence

    def _same_schema(self, columns: list[str], state: State) -> list[str]:
        return [name for name, record in self.controller.table.domains.items()
                if record.state == state.value and sorted(record.columns) == sorted(columns)]

    def _acceptance(self, batch: pd.DataFrame, columns: list[str], state: State,
                    only: list[str] | None = None) -> dict[str, float]:
        """Return, per domain in ``state`` with this schema, the fraction of rows its OOD check accepts."""
        scores = {}
        for name in self._same_schema(columns, state):
            if only is not None and name not in only:
                continue
            subgraph = self.subgraph(name)
            ratios = subgraph.ood_ratios(subgraph.inputs(batch)).min(axis=1)
            scores[name] = float((ratios <= 1.0).mean())
        return scores

    # Detection and patches ---------------------------------------------------------------

    def _monitor(self, domain: str) -> ReferenceMonitor:
        if domain not in self._monitors:
            folder = self._folder("references", domain)
            references = [pd.read_parquet(p) for p in sorted(folder.glob("depth-*.parquet"))]
            self._monitors[domain] = ReferenceMonitor(references, self.params.drift, seed=self.params.seed)
        return self._monitors[domain]

    def _save_reference(self, domain: str, depth: int, frame: pd.DataFrame) -> None:
        folder = self._folder("references", domain)
        folder.mkdir(parents=True, exist_ok=True)
        frame[feature_columns(frame)].to_parquet(folder / f"depth-{depth:03d}.parquet", index=False)
        self._monitors.pop(domain, None)

    def _detect(self, domain: str, subgraph: Subgraph, batch: pd.DataFrame, predicted: np.ndarray) -> Decision:
        monitor = self._monitor(domain)
        result = monitor.update(batch[list(subgraph.schema.columns)])
        if result is not None:
            self._last_window[domain] = result
        if domain not in self._performance:
            page_hinkley = PageHinkley(**self.params.drift.page_hinkley.model_dump())
            self._performance[domain] = PerformanceMonitor(ADWIN(), page_hinkley)
        performance = self._performance[domain]
        # drift_detected describes only the last update, so an alarm on an earlier row of the
        # batch is kept here.
        performance_drift = False
        if LABEL in batch:
            for error in (predicted != batch[LABEL].to_numpy()):
                performance.update(float(error))
                performance_drift = performance_drift or performance.drift_detected
        drifting = monitor.in_drift or performance_drift
        if drifting and LABEL in batch:
            self._drift_rows.setdefault(domain, []).append(batch)
        elif not drifting:
            self._drift_rows.pop(domain, None)
        labelled = sum(len(f) for f in self._drift_rows.get(domain, []))
        signals = DomainSignals(
            domain=domain,
            state=self.controller.domain(domain).state,
            feature_drift=result,
            persistent_drift=monitor.drift_detected,
            performance_drift=performance_drift,
            new_domain_samples=0,
            new_domain_min_samples=self.params.new_expert.min_samples,
            labelled_samples=labelled,
            min_patch_samples=self.params.patch.min_samples_for(domain),
        )
        decision = decide(signals)
        if result is not None or decision.action is not Action.IGNORE:
            self.events.emit("drift_check", step=self.step, domain=domain,
                             window=result.to_dict() if result is not None else None,
                             persistent=monitor.drift_detected, performance_drift=performance_drift,
                             labelled_drift_rows=labelled, decision=decision.to_dict())
        return decision

    def train_patch(self, domain: str, data: pd.DataFrame | None = None, *, name: str = "patch-data") -> PatchReport:
        """Train a patch for ``domain`` on ``data`` (default: the rows collected since drift began).

        ``data`` are labelled rows with the domain's input columns and ``label``. For a chained
        domain they may instead have the request columns that ``route_batch`` takes (``a.px_00``
        ...), and the upstream stages compute the domain's inputs from them. Given ``data`` must
        meet the domain's expectations, as served batches do. The collected drift rows met them
        when they were ingested, so they are not checked again.

        One training per domain runs at a time. The domain's lock, which ``remember`` and
        ``freeze`` also take, is held from reading the routing table to committing the new
        version, so a second process waits, then trains its patch on top of the first one's.

        Args:
            name: name of ``data`` in messages and in the quarantine folder, e.g. its file name.

        Raises:
            InputError: ``data`` lacks input columns of the domain or has rows without a label.
            DataValidationError: ``data`` failed the domain's expectations. It was quarantined
                with every column as given, and no patch was trained.
            DomainBusyError: another process held the domain's lock for longer than
                ``remembering.wait_timeout_s``; no patch was trained.
            PatchRejectedError: the patch's held-out accuracy gain was below
                ``patch.min_accuracy_gain``; it was not registered, and the rows collected
                since drift began (when ``data`` is None) were saved to the error's ``data_path``.
        """
        self.controller.reload()
        self.controller.domain(domain)  # An unknown domain fails here, before a lock file is made for it.
        lock = self._acquire_training_lock(domain)
        try:
            return self._train_patch_locked(domain, data, name)
        finally:
            lock.release()

    def _acquire_training_lock(self, domain: str) -> FileLock:
        """Take ``domain``'s lock for a patch training, waiting up to ``remembering.wait_timeout_s``."""
        lock = self._domain_lock(domain)
        try:
            lock.acquire(timeout=0)
            return lock
        except Timeout:
            pass
        timeout = self.params.remembering.wait_timeout_s
        self.events.emit("patch_waiting", step=self.step, domain=domain, timeout_s=timeout)
        logger.info("Patch training for %r waits up to %g s for the domain lock held by another process", domain, timeout)
        started = time.perf_counter()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise DomainBusyError(
                f"Patch training for {domain!r} timed out after {time.perf_counter() - started:.1f} s waiting for "
                f"another process that is training, freezing or restoring it (remembering.wait_timeout_s="
                f"{timeout:g}). Run it again once that process has finished, or raise remembering.wait_timeout_s."
            ) from None
        return lock

    def _train_patch_locked(self, domain: str, data: pd.DataFrame | None, name: str) -> PatchReport:
        # Another process may have patched or restored the domain while this one waited for the lock.
        self.controller.reload()
        collected = data is None
        if collected:
            data = pd.concat(self._drift_rows.get(domain, []), ignore_index=True) if domain in self._drift_rows else pd.DataFrame()
        else:
            data = self._checked_patch_data(domain, data, name)
        subgraph = self.subgraph(domain)
        patched, report = train_patch(subgraph, data, self.params.patch, target_fpr=self.params.ood.target_fpr,
                                min_tail_samples=self.params.ood.min_tail_samples,
                                      seed=self.params.seed + self.step)
        record = self.controller.domain(domain)
        # The accuracies are float32 means, so a gain equal to the setting can come out 1e-8 short.
        if report.accuracy_after - report.accuracy_before < self.params.patch.min_accuracy_gain - 1e-6:
            raise self._reject_patch(report, record, data, None if collected else name)
        version = self._unused_version(domain, record)
        model_dir = self._save_hot_copy(patched, version=version)
        source = "drifted rows" if collected else f"rows of {name}"
        self.controller.update(domain, reason=f"patch {patched.depth} trained on {len(data)} {source}",
                               version=version, model_dir=model_dir, n_params=patched.n_parameters(),
                               fp32_bytes=patched.fp32_bytes(),
                               patches=[*record.patches, f"patch-{patched.depth}"])
        self._hot[domain] = patched
        # The copy in memory matches this directory, so a later patch from another process replaces it.
        self._hot_dirs[domain] = model_dir
        self._save_reference(domain, patched.depth, data)
        self._drift_rows.pop(domain, None)
        self._performance.pop(domain, None)
        self.events.emit("patch_trained", step=self.step, version=version, **asdict(report))
        return report

    def _reject_patch(self, report: PatchReport, record: DomainRecord, data: pd.DataFrame,
                      name: str | None) -> PatchRejectedError:
        """Record a patch below ``patch.min_accuracy_gain`` and return the error to raise.

        Given data stays where the caller has it (``name``). Rows collected since drift began are
        saved to ``drift_rows/`` and the domain's drift monitors start afresh, as for a patch
        request, so the next attempt waits for another ``drift.persistence`` drifting windows.
        """
        domain = report.domain
        data_path = name
        if name is None:
            data_path = str(self._set_aside_drift_rows(domain, data, f"rejected-step-{self.step:05d}.parquet"))
        self.events.emit("patch_rejected", step=self.step, version=record.version, data_path=data_path,
                         min_accuracy_gain=self.params.patch.min_accuracy_gain, **asdict(report))
        return PatchRejectedError(
            f"Patch {report.depth} for {domain!r} changed held-out accuracy by "
            f"{report.accuracy_after - report.accuracy_before:+.3f} ({report.accuracy_before:.3f} -> "
            f"{report.accuracy_after:.3f} on {report.holdout_samples} of the {len(data)} rows of {data_path}), below "
            f"patch.min_accuracy_gain={self.params.patch.min_accuracy_gain:g}, so it was not registered and "
            f"{domain!r} still serves version {record.version}. Check the rows' labels, train on more labelled "
            "rows, or lower patch.min_accuracy_gain in params.yaml.",
            data_path=data_path,
        )

    def _checked_patch_data(self, domain: str, data: pd.DataFrame, name: str) -> pd.DataFrame:
        """Return ``data`` as the labelled input rows of ``domain``, or raise the error that names the fix."""
        record = self.controller.domain(domain)
        chained = domain in self.controller.table.upstream
        if chained and any(c not in data.columns for c in record.columns):
            # A chained domain's patch reads its upstream outputs; compute them from the request columns as route does.
            data = chain_inputs(self, domain, data, validate=True, name=name).frame
        missing = [c for c in record.columns if c not in data.columns]
        if missing:
            raise InputError(
                f"Patch data {name!r} lacks {len(missing)} input columns of {domain!r}, e.g. {missing[:5]}"
                f"{unused_columns_clause(data, record.columns)}; a patch needs every column of the domain's schema."
            )
        if LABEL not in data.columns or data[LABEL].isna().any():
            unlabelled = len(data) if LABEL not in data.columns else int(data[LABEL].isna().sum())
            raise InputError(
                f"Patch data {name!r} has {unlabelled} rows without a {LABEL!r} value; a patch needs labelled "
                f"rows. Add the true class of every row in a {LABEL!r} column."
            )
        if not chained:
            # chain_inputs above checked a chained domain's request columns against its upstream domains.
            spec = self.subgraph(domain).info["expectations"]
            require_valid(data[[*record.columns, LABEL]], spec, name=f"{domain}:{name}",
                          quarantine_dir=self.params.paths.quarantine, quarantine_rows=data)
        return data

    # New domains -------------------------------------------------------------------------

    def _queue_folder(self, columns: list[str]) -> Path:
        key = safe_name("schema-" + "-".join(sorted(columns))[:80].lower().replace("_", "-"))
        return self.root / "new_domain_queue" / key

    def _queue_unknown(self, batch: pd.DataFrame, evidence: dict[str, Any], name: str) -> BatchResult:
        folder = self._queue_folder([c for c in batch.columns if c != LABEL])
        folder.mkdir(parents=True, exist_ok=True)
        batch.to_parquet(folder / f"{name}.parquet", index=False)
        queued = sum(len(pd.read_parquet(p)) for p in folder.glob("*.parquet"))
        signals = DomainSignals(domain=None, state="unknown", feature_drift=None, persistent_drift=False,
                                performance_drift=False, new_domain_samples=queued,
                                new_domain_min_samples=self.params.new_expert.min_samples,
                                labelled_samples=queued, min_patch_samples=0)
        decision = decide(signals)
        self.events.emit("new_domain_queued", step=self.step, batch=name, rows=len(batch), queued=queued,
                         routing=evidence, decision=decision.to_dict())
        result = BatchResult(self.step, None, None, None, len(batch), decision=decision.to_dict(), actions=["queued"])
        if decision.action is Action.NEW_EXPERT and self.defer_actions:
            accepted = evidence.get("accepted_fraction") or {}
            self.events.emit("new_domain_detected", step=self.step, domain=folder.name, window=self.step,
                             scores={name: float(value) for name, value in accepted.items()}, rows=queued,
                             data_path=str(folder), version=0, bundle_version=None)
            result.actions.append("expert_requested")
        elif decision.action is Action.NEW_EXPERT:
            record = self.train_new_expert(folder)
            result.actions.append(f"registered {record.name}")
        return result

    def train_new_expert(self, queue_folder: Path) -> DomainRecord:
        """Train an expert on the queued rows of one schema and register it under a new tag."""
        files = sorted(queue_folder.glob("*.parquet"))
        rows = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
        settings = self.params.new_expert
        rng = np.random.default_rng(self.params.seed)
        order = rng.permutation(len(rows))
        n_holdout = int(round(settings.holdout_fraction * len(rows)))
        holdout, train = rows.iloc[order[:n_holdout]], rows.iloc[order[n_holdout:]]
        existing = [d for d in self.controller.table.domains if d.startswith(settings.tag_prefix + "/")]
        domain = f"{settings.tag_prefix}/domain-{len(existing) + 1}"
        subgraph = train_expert(domain, train, holdout, settings, target_fpr=self.params.ood.target_fpr,
                                min_tail_samples=self.params.ood.min_tail_samples,
                                seed=self.params.seed)
        record = self.register(subgraph, tags=[domain], reference=train,
                               reason=f"new domain: {len(rows)} queued rows that no domain accepted")
        consumed = queue_folder.parent / "consumed" / safe_name(domain)
        consumed.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.move(str(path), consumed / path.name)
        self.events.emit("expert_trained", step=self.step, domain=domain, train_rows=len(train),
                         holdout_rows=len(holdout), holdout_accuracy=subgraph.info["holdout_accuracy"],
                         seconds=subgraph.info["train_seconds"])
        return record

    # Deferred actions --------------------------------------------------------------------
    # With defer_actions, ingestion saves the rows an action needs and emits an event with
    # their path. Another process then runs the action through the methods below.

    def _set_aside_drift_rows(self, domain: str, rows: pd.DataFrame, file_name: str) -> Path:
        """Save ``rows`` as ``drift_rows/<domain>/<file_name>`` and restart the domain's drift
        monitors, so that the next patch needs another ``drift.persistence`` drifting windows."""
        folder = self._folder("drift_rows", domain)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / file_name
        rows.to_parquet(path, index=False)
        self._drift_rows.pop(domain, None)
        self._performance.pop(domain, None)
        self._monitors.pop(domain, None)
        return path

    def _request_patch(self, domain: str) -> Path:
        """Save the rows collected since drift began and emit ``drift_detected`` with their path.

        The domain's drift monitors start afresh, so the next request needs another
        ``drift.persistence`` drifting windows.
        """
        rows = pd.concat(self._drift_rows[domain], ignore_index=True)
        performance = self._performance.get(domain)
        path = self._set_aside_drift_rows(domain, rows, f"step-{self.step:05d}.parquet")
        window = self._last_window.get(domain)
        scores = {
            "score": window.to_dict()["score"] if window is not None else None,
            "threshold": window.to_dict()["threshold"] if window is not None else None,
            "performance_drift": float(performance.drift_detected) if performance is not None else 0.0,
        }
        record = self.controller.domain(domain)
        self.events.emit("drift_detected", step=self.step, domain=domain, window=self.step, scores=scores,
                         rows=len(rows), data_path=str(path), version=record.version,
                         bundle_version=record.cold_version)
        return path

    def _request_remembering(self, record: DomainRecord, batch: pd.DataFrame, name: str) -> BatchResult:
        """Keep a batch for a cold domain in ``pending/`` and emit ``cold_domain_requested``.

        ``replay_pending`` serves the batch once the domain is hot again. Only the first batch
        for a domain in this instance emits the request; later ones emit ``batch_pending``,
        because the one restore serves every pending batch.
        """
        folder = self._folder("pending", record.name)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.parquet"
        batch.to_parquet(path, index=False)
        kind = "batch_pending" if record.name in self._remembering_requested else "cold_domain_requested"
        self._remembering_requested.add(record.name)
        self.events.emit(kind, step=self.step, domain=record.name, window=self.step, scores={},
                         rows=len(batch), data_path=str(path), version=record.version,
                         bundle_version=record.cold_version, state=record.state)
        return BatchResult(self.step, record.name, record.version, record.state, len(batch),
                           actions=["remember_requested"])

    def replay_pending(self, domain: str) -> list[dict[str, Any]]:
        """Serve the batches kept in ``pending/`` while ``domain`` was cold; return each outcome.

        Each file moves to ``pending/<domain>/served/`` before it is ingested, so two replays
        never serve one batch twice. A batch that fails validation is quarantined by ``ingest``
        and its outcome names the quarantine path.
        """
        folder = self._folder("pending", domain)
        tag = self.controller.domain(domain).tags[0]
        outcomes = []
        for path in sorted(folder.glob("*.parquet")):
            served = folder / "served" / path.name
            served.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.replace(served)
            except FileNotFoundError:
                continue
            try:
                result = self.ingest(pd.read_parquet(served), tag, name=path.stem)
            except DataValidationError as exc:
                outcomes.append({"batch": path.stem, "quarantined": exc.quarantine_path})
                continue
            outcomes.append({"batch": path.stem, **asdict(result)})
        return outcomes

    def train_patch_from_file(self, domain: str, data_path: Path | str) -> PatchReport | None:
        """Train a patch for ``domain`` on the labelled rows in ``data_path`` (Parquet).

        The file then moves to ``consumed/`` beside it. Returns None, and trains nothing, when
        the file is already in ``consumed/`` because another run trained on it.

        Raises:
            InputError: the file is neither at ``data_path`` nor in ``consumed/``.
            PatchRejectedError: the patch was below ``patch.min_accuracy_gain``; the file stays
                at ``data_path``.
        """
        path = Path(data_path)
        consumed = path.parent / "consumed" / path.name
        if not path.exists():
            if consumed.exists():
                logger.info("Drifted rows %s were already used by another run; no patch trained.", path)
                return None
            raise InputError(f"Drifted rows {path} not found; pass the data_path of a drift_detected event.")
        try:
            report = self.train_patch(domain, data=pd.read_parquet(path), name=path.name)
        except PatchRejectedError as exc:
            exc.data_path = str(path)
            raise
        consumed.parent.mkdir(parents=True, exist_ok=True)
        path.replace(consumed)
        return report

    def train_new_expert_from_queue(self, queue_folder: Path | str) -> DomainRecord | None:
        """Train a new expert on a new-domain queue folder; return None when it contains fewer
        than ``new_expert.min_samples`` rows, for example because another run consumed it."""
        folder = Path(queue_folder)
        queued = sum(len(pd.read_parquet(p)) for p in folder.glob("*.parquet"))
        if queued < self.params.new_expert.min_samples:
            logger.info("Queue %s contains %d rows, below new_expert.min_samples=%d; no expert trained.",
                        folder, queued, self.params.new_expert.min_samples)
            return None
        self.controller.reload()
        return self.train_new_expert(folder)

    # Cold storage ------------------------------------------------------------------------

    def _add_version(self, domain: str, path: Path) -> StoredVersion:
        """Store a written bundle with DVC. A failed push still counts as frozen: the version is
        in the local DVC cache and the next sweep pushes it, so a retry never writes it twice."""
        try:
            return self.store.add_version(domain, path)
        except StorageError as exc:
            if path.name not in self.store.version_names(domain):
                raise
            logger.warning("Bundle %s of %s is stored locally but not pushed; the next sweep retries: %s",
                           path.name, domain, exc)
            self.events.emit("push_pending", step=self.step, domain=domain, version=path.name, error=str(exc))
            self._push_pending_marker().touch()
            return next(v for v in self.store.versions(domain) if v.version == path.name)

    def _push_pending_marker(self) -> Path:
        return self.root / "cold_push_pending"

    def _retry_pending_push(self) -> None:
        try:
            self.push_pending()
        except StorageError as exc:
            logger.warning("Pushing cold-storage bundles failed again; the next sweep retries: %s", exc)

    def push_pending(self) -> bool:
        """Push the bundles whose DVC push failed earlier; return False when none were pending.

        Raises:
            StorageError: the push failed again; the bundles stay pending.
        """
        marker = self._push_pending_marker()
        if not marker.exists():
            return False
        self.store.push()
        marker.unlink(missing_ok=True)
        self.events.emit("push_retried", step=self.step)
        return True

    def sweep(self) -> list[Eviction]:
        """Move hot domains to cold storage as ``cold_storage.policy`` picks them, and return them.

        Both policies move domains idle for more than ``cold_storage.max_idle_s``, then others
        until the hot set fits in ``cold_storage.hot_budget_bytes``. Domains pinned in the
        routing table or listed in ``cold_storage.pinned`` stay hot. Each eviction is logged,
        and its reason is in the ``sweep`` and ``swept`` events. A domain that another
        process froze or is restoring meanwhile is skipped and left out of the result.
        """
        self._retry_pending_push()
        now = self.clock()
        settings = self.params.cold_storage
        candidates = self._sweep_candidates()
        unknown = sorted(set(settings.pinned) - set(self.controller.table.domains))
        if unknown:
            logger.warning("cold_storage.pinned lists unknown domains %s: check their names in params.yaml.", unknown)
        evictions = select_evictions(settings, candidates, now=now)
        hot_bytes = sum(c.hot_bytes for c in candidates)
        evicted = {e.domain for e in evictions}
        left_bytes = hot_bytes - sum(c.hot_bytes for c in candidates if c.domain in evicted)
        self.events.emit("sweep", step=self.step, time=now, policy=settings.policy, hot=[c.domain for c in candidates],
                         pinned=[c.domain for c in candidates if c.pinned], hot_bytes=hot_bytes,
                         budget_bytes=settings.hot_budget_bytes, evicted=[asdict(e) for e in evictions])
        if left_bytes > settings.hot_budget_bytes:
            logger.warning("Hot set stays at %d bytes, over the %d-byte budget, because the rest is pinned.",
                           left_bytes, settings.hot_budget_bytes)

        swept = []
        for eviction in evictions:
            logger.info("Sweeping %s (%s policy): %s", eviction.domain, settings.policy, eviction.reason)
            try:
                self.freeze(eviction.domain, reason=eviction.reason)
            except IllegalTransitionError as exc:
                logger.warning("Sweep skipped %s: %s", eviction.domain, exc)
                self.events.emit("sweep_skipped", step=self.step, domain=eviction.domain, reason=str(exc))
                continue
            swept.append(eviction)
        return swept

    def keep_reasons(self) -> dict[str, str]:
        """Return, for each hot domain, why a sweep now would keep it hot: pinned, or used within
        ``cold_storage.max_idle_s`` while the hot set fits ``cold_storage.hot_budget_bytes``."""
        settings = self.params.cold_storage
        candidates = self._sweep_candidates()
        evicted = {e.domain for e in select_evictions(settings, candidates, now=self.clock())}
        staying = [c for c in candidates if c.domain not in evicted]
        hot_bytes = sum(c.hot_bytes for c in staying)
        return {c.domain: keep_reason(c, now=self.clock(), max_idle_s=settings.max_idle_s, hot_bytes=hot_bytes,
                                      budget_bytes=settings.hot_budget_bytes)
                for c in staying}

    def _sweep_candidates(self, *, exclude: str | None = None) -> list[SweepCandidate]:
        """Return every hot domain but ``exclude`` from a freshly read routing table."""
        self.controller.flush_locality()
        table = self.controller.reload()
        pinned = set(self.params.cold_storage.pinned)
        return [
            SweepCandidate(r.name, r.locality.last_used, r.locality.uses, r.locality.activity, r.fp32_bytes,
                           r.pinned or r.name in pinned, r.metrics.get("restore_seconds"))
            for r in table.domains.values()
            if r.state == State.HOT.value and r.name != exclude
        ]

    def freeze(self, domain: str, *, reason: str) -> dict[str, Any]:
        """Write ``domain``'s subgraph to a verified, DVC-versioned bundle and drop the hot copy.

        The bundle's ``metadata.json`` records the lifecycle history, the locality (last use,
        use counts), the metrics and the measured quantization error:
        ``metrics.buffer_holdout_accuracy_fp32`` and ``metrics.buffer_holdout_accuracy_quantized``
        are the accuracies on the held-out buffer rows before and after quantization, and
        ``metrics.quantization_accuracy_change`` is their difference. The ``swept`` event
        repeats them. When INT8 loses more accuracy than ``remembering.gate_tolerance``, which
        would make every later gate fail, the bundle is written as FP16 instead and
        ``quantization_fallback`` records why.

        Raises:
            IllegalTransitionError: the domain is not hot, e.g. another process froze it.
            StorageError: no quantization keeps the accuracy within the tolerance, the written
                bundle does not restore the measured model, DVC failed, or another process
                held the domain's lock for longer than ``remembering.wait_timeout_s``. The
                domain stays hot.
        """
        lock = self._domain_lock(domain)
        try:
            lock.acquire(timeout=self.params.remembering.wait_timeout_s)
        except Timeout as exc:
            raise StorageError(
                f"Timed out after {self.params.remembering.wait_timeout_s:g} s waiting for another process that "
                f"holds the lock of {domain!r} ({lock.lock_file}); {domain!r} stays hot. Freeze it again later."
            ) from exc
        try:
            return self._freeze_locked(domain, reason)
        finally:
            lock.release()

    def _freeze_locked(self, domain: str, reason: str) -> dict[str, Any]:
        settings = self.params.cold_storage
        self.controller.reload()
        record = self.controller.domain(domain)
        if record.state != State.HOT.value:
            raise IllegalTransitionError(
                f"Domain {domain!r} is {record.state}, not hot, so there is nothing to freeze; another "
                "process may have frozen it or be restoring it."
            )
        subgraph = self.subgraph(domain)

        # The mini-buffer, and the held-out rows whose accuracy the gate will compare against.
        buffer = balanced_buffer(self._reservoir(domain), settings.buffer_size, seed=self.params.seed)
        rng = np.random.default_rng(self.params.seed)
        holdout_rows = sorted(rng.choice(len(buffer), int(round(self.params.remembering.holdout_fraction * len(buffer))),
                                         replace=False).tolist())
        holdout = buffer.iloc[holdout_rows]
        accuracy_fp32 = buffer_accuracy(subgraph, holdout)
        mode, accuracy_quantized, fallback = self._choose_quantization(domain, subgraph, holdout, accuracy_fp32)

        # Write the bundle atomically.
        path = self.store.next_version_path(domain)
        metadata = {
            "domain": domain,
            "version": record.version,
            "bundle_version": path.name,
            "architecture": record.architecture,
            "subgraph": subgraph.describe(reference_tensors_inline=False),
            "lifecycle": self._lifecycle_history(domain),
            "last_used": record.locality.last_used,
            "locality": asdict(record.locality),
            "metrics": {
                **record.metrics,
                "buffer_holdout_accuracy_fp32": accuracy_fp32,
                "buffer_holdout_accuracy_quantized": accuracy_quantized,
                "quantization_accuracy_change": accuracy_quantized - accuracy_fp32,
            },
            "quantization_fallback": fallback,
            "holdout_rows": holdout_rows,
            "reason": reason,
            "frozen_at": self.clock(),
        }
        info = write_bundle(path, state_dict=subgraph.state_dict(), references=subgraph.reference_tensors(),
                            mode=mode, metadata=metadata, buffer=buffer,
                            smote=smote_settings(buffer[LABEL].to_numpy(), k_neighbors=settings.smote_k,
                                                 seed=self.params.seed),
                            expectations=subgraph.info["expectations"])
        agreement = self._verify_frozen(domain, path, subgraph, buffer.iloc[: settings.probe_rows], holdout,
                                        accuracy_quantized)

        # Version it with DVC, push it to the remote, then release the hot copy.
        stored = self._add_version(domain, path)
        self.controller.set_state(domain, State.COLD, reason=f"swept: {reason}", cold_version=stored.version,
                                  model_dir=None)
        self._hot.pop(domain, None)
        self._hot_dirs.pop(domain, None)
        shutil.rmtree(self._folder("models", domain), ignore_errors=True)

        summary = {
            "version": stored.version,
            "quantization": mode,
            "quantization_fallback": fallback,
            "bundle_bytes": info.stored_bytes,
            "weights_bytes": info.weights_bytes,
            "fp32_bytes": info.fp32_bytes,
            "compression": info.fp32_bytes / max(info.weights_bytes, 1),
            "max_abs_error": info.quantization["max_abs_error"],
            "kept_higher_precision": info.quantization["kept_higher_precision"],
            "buffer_rows": len(buffer),
            "probe_agreement": agreement,
            "buffer_accuracy_fp32": accuracy_fp32,
            "buffer_accuracy_quantized": accuracy_quantized,
            "buffer_accuracy_change": accuracy_quantized - accuracy_fp32,
            "dvc_file": str(stored.dvc_file),
        }
        self.events.emit("swept", step=self.step, domain=domain, reason=reason, **summary)
        return summary

    def _choose_quantization(
        self, domain: str, subgraph: Subgraph, holdout: pd.DataFrame, accuracy_fp32: float
    ) -> tuple[str, float, str | None]:
        """Return the mode to store ``domain`` in, its held-out accuracy after a round trip, and
        why the configured mode was replaced (None when it was kept)."""
        configured = self.params.cold_storage.quantization.mode_for(domain)
        tolerance = self.params.remembering.gate_tolerance
        modes = [configured, "fp16"] if configured == "int8" else [configured]
        accuracies: dict[str, float] = {}
        for mode in modes:
            quantized = quantize_state_dict(subgraph.state_dict(), mode)
            restored = Subgraph.from_parts(subgraph.describe(), dequantize_state_dict(quantized.tensors, quantized.manifest))
            accuracies[mode] = buffer_accuracy(restored, holdout)
            if accuracies[mode] >= accuracy_fp32 - tolerance:
                fallback = None
                if mode != configured:
                    fallback = (f"{configured} lowered held-out buffer accuracy from {accuracy_fp32:.3f} to "
                                f"{accuracies[configured]:.3f}, more than remembering.gate_tolerance={tolerance:g}")
                    logger.warning("Freezing %s as %s: %s.", domain, mode, fallback)
                return mode, accuracies[mode], fallback
        raise StorageError(
            f"Quantizing {domain!r} lowers its held-out buffer accuracy from {accuracy_fp32:.3f} to "
            f"{accuracies} (by mode), more than remembering.gate_tolerance={tolerance:g}, so no restore could pass "
            f"the gate; it stays hot. Pin it with cold_storage.pinned, or raise remembering.gate_tolerance."
        )

    def _verify_frozen(
        self, domain: str, path: Path, subgraph: Subgraph, probe: pd.DataFrame, holdout: pd.DataFrame,
        accuracy_quantized: float,
    ) -> float:
        """Reload the written bundle and return its agreement with the hot copy on ``probe``.

        The bundle is deleted and StorageError raised when the agreement is below 90 % or the
        reloaded model's held-out accuracy differs from the one recorded in its metadata.
        """
        loaded = read_bundle(path)
        restored = Subgraph.from_parts(loaded.metadata["subgraph"], loaded.state_dict, loaded.references)
        agreement = float((restored.predict(probe, per_row=True).labels == subgraph.predict(probe, per_row=True).labels).mean())
        reloaded_accuracy = buffer_accuracy(restored, holdout)
        if agreement < 0.9:
            shutil.rmtree(path)
            raise StorageError(
                f"Quantized {domain!r} agrees with the hot copy on only {agreement:.0%} of the probe batch; "
                f"it stays hot. Set cold_storage.quantization.per_domain.{domain}: fp16 in params.yaml."
            )
        if abs(reloaded_accuracy - accuracy_quantized) > 1e-9:
            shutil.rmtree(path)
            raise StorageError(
                f"Bundle {path} of {domain!r} restores a model with held-out accuracy {reloaded_accuracy:.4f}, but "
                f"{accuracy_quantized:.4f} was measured before writing; it stays hot. Check the disk, then freeze again."
            )
        return agreement

    def _lifecycle_history(self, domain: str) -> list[dict[str, Any]]:
        """Return every recorded change of ``domain``: table version, time, state, subgraph version, reason."""
        return [
            {"table_version": change["version"], "time": change["time"], "state": change["current"]["state"],
             "version": change["current"]["version"], "reason": change["reason"]}
            for change in self.controller.history(domain)
            if change.get("current") is not None
        ]

    def remember(self, domain: str, *, recent: pd.DataFrame | None = None, version: str | None = None) -> RememberResult:
        """Bring a cold domain back: restore a bundle, fine-tune it if needed, and pass the validation gate.

        One process at a time restores a domain: a file lock per domain makes a second request
        wait up to ``remembering.wait_timeout_s``. If the domain is hot when the wait ends, the
        result reports it and nothing is restored twice. A failed gate rolls back: the domain stays
        cold, its stored versions are unchanged, and the ``gate_failed`` event carries the
        gate's numbers. Before a domain turns hot, other domains are frozen if the hot set would
        exceed ``cold_storage.hot_budget_bytes``. Its last use is set to the restore time, so
        the next sweep does not freeze it again at once.

        Args:
            domain: the domain to restore.
            recent: the batch that requested the domain. It is checked against the domain's
                data expectations and decides whether a fine-tune runs; it is quarantined
                when the wait times out.
            version: a stored bundle version such as ``"v0001"``, the only one tried. A hot
                domain is frozen into a new version first, so rolling back loses nothing. If
                the requested version then fails the gate, the domain stays cold until a
                request restores its newest version. By default the domain's newest bundle is
                restored, or the next older intact one when its files fail their hash checks.

        Raises:
            RememberTimeoutError: another process held the domain's lock for longer than
                ``remembering.wait_timeout_s``; ``recent`` was quarantined.
            StorageError: ``version`` is not a stored version of ``domain``.
            IllegalTransitionError: the domain is retired or still training.
        """
        waited = self._acquire_remember_lock(domain, recent)
        try:
            return self._remember_locked(domain, recent, version, waited)
        finally:
            self._domain_lock(domain).release()

    def _remember_locked(
        self, domain: str, recent: pd.DataFrame | None, version: str | None, waited: float
    ) -> RememberResult:
        self.controller.reload()
        record = self.controller.domain(domain)
        if record.state == State.HOT.value and version is None:
            return self._already_hot(domain, waited)
        versions = self._versions_to_try(domain, record.cold_version, version)
        if record.state == State.HOT.value:
            self.freeze(domain, reason=f"replaced on request by bundle {version}")
        elif record.state == State.REMEMBERING.value:
            # This process holds the lock, so the one that set this state stopped before it finished.
            self.controller.set_state(domain, State.COLD, reason="an earlier remembering was interrupted")
        record = self.controller.set_state(domain, State.REMEMBERING, reason="request for a cold domain")
        self.events.emit("remembering", step=self.step, domain=domain, version=versions[0] if versions else None,
                         requested_version=version, waited_s=waited)

        try:
            result = restore_and_gate(self.store, domain, versions, recent, self.params, events=self.events,
                                      step=self.step)
        except Exception as exc:
            self.controller.set_state(domain, State.COLD, reason=f"remembering failed: {exc}")
            self.events.emit("remember_error", step=self.step, domain=domain, error=str(exc))
            raise
        result.waited_seconds = waited
        if not result.passed:
            record = self.controller.set_state(domain, State.COLD, reason=f"validation gate failed: {result.reason}")
            self.events.emit("gate_failed", step=self.step, domain=domain, rolled_back_to=record.cold_version,
                             **result.summary())
            return result

        self._make_room(domain, result.subgraph.fp32_bytes())
        self._promote(domain, record, result)
        self.events.emit("gate_passed", step=self.step, domain=domain, **result.summary())
        return result

    def _versions_to_try(self, domain: str, cold_version: str | None, version: str | None) -> list[str]:
        """Return the bundle versions to restore from, in order: the requested one, or the domain's
        newest version followed by the older ones."""
        stored = self.store.version_names(domain)
        if version is not None:
            if version not in stored:
                fix = (f"Pass one of them, e.g. `mycelium remember {domain} --version {stored[-1]}`." if stored
                       else "A domain gets its first bundle when a sweep freezes it.")
                raise StorageError(
                    f"Domain {domain!r} has no stored bundle version {version!r}; stored versions: "
                    f"{stored or 'none'}. {fix}"
                )
            return [version]
        newest_first = stored[::-1]
        if cold_version in newest_first:
            newest_first = newest_first[newest_first.index(cold_version):]
        return newest_first

    def _promote(self, domain: str, record: DomainRecord, result: RememberResult) -> None:
        """Make the subgraph that passed the gate the domain's hot, served version."""
        subgraph = result.subgraph
        changed = result.finetuned or result.bundle_version != record.cold_version
        version = self._unused_version(domain, record) if changed else record.version
        model_dir = self._save_hot_copy(subgraph, version=version)
        tuned = "fine-tuned, " if result.finetuned else ""
        self.controller.set_state(
            domain, State.HOT, reason=f"restored from bundle {result.bundle_version}, {tuned}gate passed",
            version=version, model_dir=model_dir, n_params=subgraph.n_parameters(), fp32_bytes=subgraph.fp32_bytes(),
            patches=[f"patch-{depth}" for depth in range(1, subgraph.depth + 1)],
            metrics={**record.metrics, "restore_seconds": result.restore_seconds},
        )
        self._hot[domain] = subgraph
        # The folder just saved, so that a later change by another process reloads the copy.
        self._hot_dirs[domain] = model_dir
        self._monitors.pop(domain, None)
        self._performance.pop(domain, None)
        self._drift_rows.pop(domain, None)
        self._align_references(domain, subgraph.depth)
        self.controller.record_use(domain, 0)
        self.controller.flush_locality()

    def _already_hot(self, domain: str, waited: float) -> RememberResult:
        if waited > 0:
            # Another process restored it while this one waited: read its hot copy from disk.
            self._hot.pop(domain, None)
            self._hot_dirs.pop(domain, None)
        record = self.controller.domain(domain)
        result = RememberResult(domain, True, f"{domain!r} is already hot at version {record.version}; nothing restored",
                                waited_seconds=waited, subgraph=self.subgraph(domain))
        self.events.emit("remember_skipped", step=self.step, domain=domain, reason=result.reason, waited_s=waited)
        return result

    def _domain_lock(self, domain: str) -> FileLock:
        """Return the lock that ``remember`` and ``freeze`` hold for ``domain``, shared by every
        call in this process, so that ``freeze`` can run inside ``remember``.

        The instance is kept in ``self._locks`` because filelock releases a lock when its object
        is garbage-collected. A lock referenced only by a local variable was released as soon as
        the acquiring function returned, so two processes restored one domain at once.
        """
        if domain not in self._locks:
            folder = self.root / "locks"
            folder.mkdir(parents=True, exist_ok=True)
            self._locks[domain] = FileLock(folder / f"{safe_name(domain)}.lock", is_singleton=True)
        return self._locks[domain]

    def _acquire_remember_lock(self, domain: str, recent: pd.DataFrame | None) -> float:
        """Take ``domain``'s lock, waiting up to ``remembering.wait_timeout_s``; return the seconds waited.

        On timeout ``recent`` is quarantined and RememberTimeoutError raised.
        """
        lock = self._domain_lock(domain)
        try:
            lock.acquire(timeout=0)
            return 0.0
        except Timeout:
            pass
        timeout = self.params.remembering.wait_timeout_s
        record = self.controller.reload().domains.get(domain)
        self.events.emit("remember_waiting", step=self.step, domain=domain, timeout_s=timeout,
                         state=record.state if record else None)
        started = time.perf_counter()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            waited = time.perf_counter() - started
            reason = f"timed out after {waited:.1f} s waiting for another process to finish remembering {domain!r}"
            path = None
            if recent is not None and len(recent):
                path = str(quarantine_batch(recent, name=f"{safe_name(domain)}-step-{self.step:05d}", reason=reason,
                                            quarantine_dir=self.params.paths.quarantine))
            self.events.emit("remember_timeout", step=self.step, domain=domain, waited_s=waited, quarantine_path=path)
            next_step = f"The batch is kept in {path}; send it again" if path else "Retry"
            raise RememberTimeoutError(
                f"Remembering {domain!r} {reason} (remembering.wait_timeout_s={timeout:g}). {next_step} once the domain "
                f"is hot, or raise remembering.wait_timeout_s.",
                quarantine_path=path,
            ) from None
        return time.perf_counter() - started

    def _make_room(self, domain: str, incoming_bytes: int) -> list[Eviction]:
        """Freeze other hot domains, as the sweep policy ranks them, until ``incoming_bytes`` more
        fit in the hot budget. A domain whose lock another process holds stays hot."""
        settings = self.params.cold_storage
        candidates = self._sweep_candidates(exclude=domain)
        budget = settings.hot_budget_bytes - incoming_bytes
        if sum(c.hot_bytes for c in candidates) <= budget:
            return []
        frozen = []
        for eviction in select_evictions(settings, candidates, now=self.clock(), budget_bytes=budget, evict_idle=False):
            lock = self._domain_lock(eviction.domain)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                logger.warning("Failed to make room by freezing %s: another process has its lock, so it stays hot.",
                               eviction.domain)
                continue
            reason = f"making room for {domain!r} ({incoming_bytes} bytes): {eviction.reason}"
            try:
                self.freeze(eviction.domain, reason=reason)
                frozen.append(Eviction(eviction.domain, reason))
            except (IllegalTransitionError, StorageError) as exc:
                logger.warning("Failed to make room by freezing %s, so it stays hot: %s", eviction.domain, exc)
            finally:
                lock.release()
        return frozen

    def _align_references(self, domain: str, depth: int) -> None:
        """Use the drift references of chain depths 0 to ``depth`` only.

        After a roll back to a version with fewer patches, the references of the dropped
        patches would hide drift that no patch serves any more. They move to ``beyond-depth/``
        and come back when a version with that many patches is restored.
        """
        folder = self._folder("references", domain)
        aside = folder / "beyond-depth"
        for path in sorted(folder.glob("depth-*.parquet")):
            if int(path.stem.split("-")[1]) > depth:
                aside.mkdir(parents=True, exist_ok=True)
                path.replace(aside / path.name)
        for path in sorted(aside.glob("depth-*.parquet")):
            # NOTE: references are kept per depth, not per bundle version, so after a roll back
            # and a new patch at the same depth the newer reference wins over the set-aside one.
            if int(path.stem.split("-")[1]) <= depth and not (folder / path.name).exists():
                path.replace(folder / path.name)

    # Reservoir of recent labelled rows ---------------------------------------------------

    def _reservoir(self, domain: str) -> pd.DataFrame:
        path = self._folder("reservoir", domain).with_suffix(".parquet")
        if not path.exists():
            raise StorageError(f"No recent labelled rows are stored for {domain!r}; route labelled batches first.")
        return pd.read_parquet(path)

    def _append_reservoir(self, domain: str, batch: pd.DataFrame) -> None:
        if LABEL not in batch:
            return
        path = self._folder("reservoir", domain).with_suffix(".parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = [pd.read_parquet(path)] if path.exists() else []
        rows = pd.concat([*frames, batch], ignore_index=True).tail(RESERVOIR_ROWS)
        rows.to_parquet(path, index=False)

    # Reporting ---------------------------------------------------------------------------

    def evaluate(self, domain: str, frame: pd.DataFrame, *, batch_size: int = 100) -> float:
        """Return the accuracy of ``domain``'s served subgraph on labelled ``frame``, served in
        batches of ``batch_size`` rows as the stream would send them.

        For a chained domain ``frame`` is in the request format, and every upstream domain
        must be hot too. Evaluation counts no use and runs no validation.
        """
        subgraph = self.subgraph(domain)
        plan = self.controller.chain(domain)
        correct = 0
        for start in range(0, len(frame), batch_size):
            batch = frame.iloc[start : start + batch_size]
            if plan.is_chained:
                batch = compute_inputs(plan, batch, subgraph_server(self.subgraph), schema_columns(self.subgraph)).frame
            correct += int((subgraph.predict(batch).labels == batch[LABEL].to_numpy()).sum())
        return correct / len(frame)

    def domain_table(self) -> list[dict[str, Any]]:
        """Return one row per domain: tags, state, version, size, last use, accuracy and upstream inputs."""
        return domain_rows(self.controller.table)


def routing_directory(params: Params) -> Path:
    """Return the folder of the routing table and its history, which ``Mycelium(params)`` creates."""
    return params.paths.run / "routing"


def domain_rows(table: RoutingTable) -> list[dict[str, Any]]:
    """Return one status row per domain of ``table``, sorted by name."""
    return [
        {
            "domain": record.name,
            "tags": ", ".join(record.tags),
            "state": record.state,
            "version": record.version,
            "patches": len(record.patches),
            "fp32_bytes": record.fp32_bytes,
            "cold_version": record.cold_version or "",
            "last_used": record.locality.last_used,
            "uses": record.locality.uses,
            "holdout_accuracy": record.metrics.get("holdout_accuracy"),
            "upstream": ", ".join(f"{item.slot}<-{item.domain}:{item.output}" for item in record.upstream),
        }
        for record in sorted(table.domains.values(), key=lambda r: r.name)
    ]
