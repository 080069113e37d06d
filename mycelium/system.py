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

from mycelium.cold_storage.bundle import read_bundle, write_bundle
from mycelium.cold_storage.remembering import RememberResult, restore_and_gate
from mycelium.cold_storage.smote import balanced_buffer, smote_settings
from mycelium.cold_storage.store import ColdStore
from mycelium.cold_storage.sweep import Eviction, SweepCandidate, lru_sweep
from mycelium.config import Params
from mycelium.drift.page_hinkley import PageHinkley
from mycelium.drift.policy import Action, Decision, DomainSignals, decide
from mycelium.drift.reference import ReferenceMonitor
from mycelium.errors import DataValidationError, EmptyDataError, RoutingError, StorageError
from mycelium.events import EventLog
from mycelium.experts.fitting import LABEL, feature_columns, train_expert
from mycelium.patches.training import PatchReport, train_patch
from mycelium.routing.controller import DomainRecord, MetaController
from mycelium.routing.lifecycle import State
from mycelium.routing.tags import safe_name
from mycelium.subgraph import Subgraph, load_subgraph, save_subgraph
from mycelium.validation.expectations import require_valid
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


class Mycelium:
    """One Mycelium deployment rooted at ``params.paths.run``.

    Args:
        params: validated settings.
        clock: returns the current time in seconds; the stream replay passes a simulated clock.
        events: where events go; by default ``<run>/events.jsonl``.
    """

    def __init__(self, params: Params, *, clock: Callable[[], float] = time.time, events: EventLog | None = None):
        self.params = params
        self.root = params.paths.run
        self.clock = clock
        self.events = events or EventLog(self.root / "events.jsonl")
        self.controller = MetaController(self.root / "routing", clock=clock, activity_half_life_s=params.cold_storage.max_idle_s)
        self.step = 0
        self._store: ColdStore | None = None
        self._hot: dict[str, Subgraph] = {}
        self._monitors: dict[str, ReferenceMonitor] = {}
        self._performance: dict[str, PageHinkley] = {}
        self._drift_rows: dict[str, list[pd.DataFrame]] = {}

    # Paths and handles -----------------------------------------------------------------

    @property
    def store(self) -> ColdStore:
        if self._store is None:
            self._store = ColdStore(self.params.paths.cold_store, self.params.paths.remote)
        return self._store

    def _folder(self, kind: str, domain: str) -> Path:
        return self.root / kind / safe_name(domain)

    # Registration ------------------------------------------------------------------------

    def register(self, subgraph: Subgraph, *, tags: list[str], reference: pd.DataFrame, reason: str) -> DomainRecord:
        """Register a freshly trained subgraph under ``tags`` and make it hot.

        ``reference`` is the labelled training data: drift tests compare windows against it and
        it seeds the replay reservoir from which the cold-storage buffer is drawn.
        """
        domain = subgraph.domain
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
        )
        self.controller.register(record, reason=reason)
        record = self.controller.set_state(domain, State.HOT, reason="trained and saved")
        self._hot[domain] = subgraph
        self._save_reference(domain, 0, reference)
        self._append_reservoir(domain, reference)
        self.events.emit("domain_registered", step=self.step, domain=domain, tags=record.tags, reason=reason,
                         architecture=record.architecture, n_params=record.n_params,
                         holdout_accuracy=subgraph.info.get("holdout_accuracy"))
        return record

    def _save_hot_copy(self, subgraph: Subgraph, *, version: int) -> str:
        folder = self._folder("models", subgraph.domain) / f"v{version:04d}"
        save_subgraph(subgraph, folder)
        return str(folder.relative_to(self.root))

    def subgraph(self, domain: str) -> Subgraph:
        """Return the hot subgraph of ``domain``, loading its hot copy if needed."""
        if domain in self._hot:
            return self._hot[domain]
        record = self.controller.domain(domain)
        if record.state != State.HOT.value or record.model_dir is None:
            raise RoutingError(f"Domain {domain!r} is {record.state}, not hot; call remember({domain!r}) first.")
        self._hot[domain] = load_subgraph(self.root / record.model_dir)
        return self._hot[domain]

    # Ingestion ---------------------------------------------------------------------------

    def ingest(self, batch: pd.DataFrame, tag: str | None = None, *, name: str | None = None) -> BatchResult:
        """Route one batch, serve it, run detection and carry out the decided action.

        A batch that fails validation is quarantined and DataValidationError is raised; rows
        that no domain accepts go to the new-domain queue.
        """
        self.step += 1
        name = name or f"step-{self.step:05d}"
        if len(batch) == 0:
            raise EmptyDataError(f"Batch {name!r} has no rows; there is nothing to route.")
        if tag is not None:
            domain, evidence = self.controller.resolve(tag).name, {"tag": tag}
        else:
            self._require_finite(batch, name)
            domain, evidence = self.infer_domain(batch)
            if domain is None:
                return self._queue_unknown(batch, evidence, name)

        record = self.controller.domain(domain)
        actions: list[str] = []
        if record.state == State.COLD.value:
            result = self.remember(domain, recent=batch)
            actions.append("remembered" if result.passed else "remember_failed")
            if not result.passed:
                path = quarantine_batch(batch, name=name, reason=f"domain {domain} failed its validation gate",
                                        quarantine_dir=self.params.paths.quarantine)
                raise RoutingError(
                    f"Domain {domain!r} could not be restored ({result.reason}); batch {name!r} is kept in {path}. "
                    "Retry after fixing the stored bundle or roll back with `mycelium remember`."
                )
        subgraph = self.subgraph(domain)
        try:
            require_valid(batch, subgraph.info["expectations"], name=f"{domain}:{name}",
                          quarantine_dir=self.params.paths.quarantine)
        except DataValidationError as exc:
            self.events.emit("batch_quarantined", step=self.step, domain=domain, batch=name,
                             path=exc.quarantine_path, reason=str(exc).splitlines()[0])
            raise

        prediction = subgraph.predict(batch)
        accuracy = None
        if LABEL in batch:
            accuracy = float((prediction.labels == batch[LABEL].to_numpy()).mean())
        self.controller.record_use(domain, len(batch))
        self.controller.flush_locality()
        self._append_reservoir(domain, batch)

        decision = self._detect(domain, subgraph, batch, prediction.labels)
        if decision.action is Action.PATCH:
            self.train_patch(domain)
            actions.append("patched")
        record = self.controller.domain(domain)
        depth_counts = {int(d): int(c) for d, c in zip(*np.unique(prediction.depth, return_counts=True))}
        self.events.emit("batch_routed", step=self.step, time=self.clock(), batch=name, domain=domain,
                         version=record.version, state=record.state, rows=len(batch), accuracy=accuracy,
                         depth_counts=depth_counts, routing=evidence, decision=decision.to_dict())
        return BatchResult(self.step, domain, record.version, record.state, len(batch), accuracy,
                           depth_counts, decision.to_dict(), actions)

    def _require_finite(self, batch: pd.DataFrame, name: str) -> None:
        """Quarantine an untagged batch whose features are not all finite numbers.

        Untagged batches have no domain expectations yet, but the OOD scores need finite numbers.
        """
        features = batch.drop(columns=[LABEL], errors="ignore")
        problems = [f"column {c!r} is {features[c].dtype}, not numeric"
                    for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
        numeric = features.select_dtypes("number")
        counts = (~np.isfinite(numeric.to_numpy(dtype=float))).sum(axis=0)
        problems += [f"column {c!r} has {int(n)} NaN or infinite values" for c, n in zip(numeric.columns, counts) if n]
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
        """Pick the hot domain whose schema matches and whose OOD check accepts most rows.

        Returns (None, evidence) when no domain accepts at least ``ood.min_accepted_fraction``.
        """
        columns = [c for c in batch.columns if c != LABEL]
        scores: dict[str, float] = {}
        for name, record in self.controller.table.domains.items():
            if record.state != State.HOT.value or sorted(record.columns) != sorted(columns):
                continue
            subgraph = self.subgraph(name)
            ratios = subgraph.ood_ratios(subgraph.inputs(batch)).min(axis=1)
            scores[name] = float((ratios <= 1.0).mean())
        evidence: dict[str, Any] = {"tag": None, "accepted_fraction": scores}
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
        performance = self._performance.setdefault(domain, PageHinkley(**self.params.drift.page_hinkley.model_dump()))
        if LABEL in batch:
            for error in (predicted != batch[LABEL].to_numpy()):
                performance.update(float(error))
        drifting = monitor.in_drift or performance.drift_detected
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
            performance_drift=performance.drift_detected,
            new_domain_samples=0,
            new_domain_min_samples=self.params.new_expert.min_samples,
            labelled_samples=labelled,
            min_patch_samples=self.params.patch.min_samples_for(domain),
        )
        decision = decide(signals)
        if result is not None or decision.action is not Action.IGNORE:
            self.events.emit("drift_check", step=self.step, domain=domain,
                             window=result.to_dict() if result is not None else None,
                             persistent=monitor.drift_detected, performance_drift=performance.drift_detected,
                             labelled_drift_rows=labelled, decision=decision.to_dict())
        return decision

    def train_patch(self, domain: str, data: pd.DataFrame | None = None) -> PatchReport:
        """Train a patch for ``domain`` on ``data`` (default: the rows collected since drift began)."""
        if data is None:
            data = pd.concat(self._drift_rows.get(domain, []), ignore_index=True) if domain in self._drift_rows else pd.DataFrame()
        subgraph = self.subgraph(domain)
        patched, report = train_patch(subgraph, data, self.params.patch, target_fpr=self.params.ood.target_fpr,
                                min_tail_samples=self.params.ood.min_tail_samples,
                                      seed=self.params.seed + self.step)
        record = self.controller.domain(domain)
        version = record.version + 1
        model_dir = self._save_hot_copy(patched, version=version)
        self.controller.update(domain, reason=f"patch {patched.depth} trained on {len(data)} drifted rows",
                               version=version, model_dir=model_dir, n_params=patched.n_parameters(),
                               fp32_bytes=patched.fp32_bytes(),
                               patches=[*record.patches, f"patch-{patched.depth}"])
        self._hot[domain] = patched
        self._save_reference(domain, patched.depth, data)
        self._drift_rows.pop(domain, None)
        self._performance.pop(domain, None)
        self.events.emit("patch_trained", step=self.step, version=version, **asdict(report))
        return report

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
        if decision.action is Action.NEW_EXPERT:
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

    # Cold storage ------------------------------------------------------------------------

    def sweep(self) -> list[Eviction]:
        """Move idle or least recently used hot domains to cold storage, as chosen by ``lru_sweep``."""
        now = self.clock()
        candidates = [
            SweepCandidate(r.name, r.locality.last_used, r.locality.uses, r.locality.activity, r.fp32_bytes, r.pinned)
            for r in self.controller.table.domains.values()
            if r.state == State.HOT.value
        ]
        settings = self.params.cold_storage
        evictions = lru_sweep(candidates, now=now, max_idle_s=settings.max_idle_s, budget_bytes=settings.hot_budget_bytes)
        self.events.emit("sweep", step=self.step, time=now, hot=[c.domain for c in candidates],
                         evicted=[asdict(e) for e in evictions])
        for eviction in evictions:
            self.freeze(eviction.domain, reason=eviction.reason)
        return evictions

    def freeze(self, domain: str, *, reason: str) -> dict[str, Any]:
        """Write ``domain``'s subgraph to a verified, DVC-versioned bundle and drop the hot copy."""
        settings = self.params.cold_storage
        subgraph = self.subgraph(domain)
        record = self.controller.domain(domain)

        # The mini-buffer, and the held-out rows whose accuracy the gate will compare against.
        buffer = balanced_buffer(self._reservoir(domain), settings.buffer_size, seed=self.params.seed)
        rng = np.random.default_rng(self.params.seed)
        holdout_rows = sorted(rng.choice(len(buffer), int(round(self.params.remembering.holdout_fraction * len(buffer))),
                                         replace=False).tolist())
        holdout = buffer.iloc[holdout_rows]
        accuracy_fp32 = float((subgraph.predict(holdout, per_row=True).labels == holdout[LABEL].to_numpy()).mean())

        # Write the bundle atomically.
        mode = settings.quantization.mode_for(domain)
        metadata = {
            "domain": domain,
            "version": record.version,
            "architecture": record.architecture,
            "subgraph": subgraph.describe(),
            "lifecycle": [c["current"]["state"] for c in self.controller.history(domain)],
            "last_used": record.locality.last_used,
            "metrics": {**record.metrics, "buffer_holdout_accuracy_fp32": accuracy_fp32},
            "holdout_rows": holdout_rows,
            "reason": reason,
        }
        path = self.store.next_version_path(domain)
        info = write_bundle(path, state_dict=subgraph.state_dict(), mode=mode, metadata=metadata, buffer=buffer,
                            smote=smote_settings(buffer[LABEL].to_numpy(), k_neighbors=settings.smote_k,
                                                 seed=self.params.seed),
                            expectations=subgraph.info["expectations"])

        # Reload and compare on a probe batch before the hot copy is released.
        loaded = read_bundle(path)
        restored = Subgraph.from_parts(loaded.metadata["subgraph"], loaded.state_dict)
        probe = buffer.iloc[: settings.probe_rows]
        agreement = float((restored.predict(probe, per_row=True).labels == subgraph.predict(probe, per_row=True).labels).mean())
        accuracy_quantized = float((restored.predict(holdout, per_row=True).labels == holdout[LABEL].to_numpy()).mean())
        if agreement < 0.9:
            shutil.rmtree(path)
            raise StorageError(
                f"Quantized {domain!r} agrees with the hot copy on only {agreement:.0%} of the probe batch; "
                f"it stays hot. Set cold_storage.quantization.per_domain.{domain}: fp16 in params.yaml."
            )

        # Version it with DVC, push it to the remote, then release the hot copy.
        stored = self.store.add_version(domain, path)
        self.controller.set_state(domain, State.COLD, reason=f"swept: {reason}", cold_version=stored.version,
                                  model_dir=None)
        self._hot.pop(domain, None)
        shutil.rmtree(self._folder("models", domain), ignore_errors=True)

        summary = {
            "version": stored.version,
            "quantization": mode,
            "bundle_bytes": info.stored_bytes,
            "weights_bytes": info.weights_bytes,
            "fp32_bytes": info.fp32_bytes,
            "compression": info.fp32_bytes / max(info.weights_bytes, 1),
            "buffer_rows": len(buffer),
            "probe_agreement": agreement,
            "buffer_accuracy_fp32": accuracy_fp32,
            "buffer_accuracy_quantized": accuracy_quantized,
            "dvc_file": str(stored.dvc_file),
        }
        self.events.emit("swept", step=self.step, domain=domain, reason=reason, **summary)
        return summary

    def remember(self, domain: str, *, recent: pd.DataFrame | None = None) -> RememberResult:
        """Bring a cold domain back: restore, optionally fine-tune, and pass the validation gate."""
        record = self.controller.set_state(domain, State.REMEMBERING, reason="request for a cold domain")
        self.events.emit("remembering", step=self.step, domain=domain, version=record.cold_version)
        versions = [v.version for v in reversed(self.store.versions(domain))]
        result = restore_and_gate(self.store, domain, versions, recent, self.params, events=self.events, step=self.step)
        if not result.passed:
            self.controller.set_state(domain, State.COLD, reason=f"validation gate failed: {result.reason}")
            self.events.emit("gate_failed", step=self.step, domain=domain, **result.summary())
            return result
        version = record.version + (1 if result.finetuned else 0)
        model_dir = self._save_hot_copy(result.subgraph, version=version)
        self.controller.set_state(domain, State.HOT, reason=f"restored from {result.bundle_version}, gate passed",
                                  version=version, model_dir=model_dir)
        self._hot[domain] = result.subgraph
        self._monitors.pop(domain, None)
        self.events.emit("gate_passed", step=self.step, domain=domain, **result.summary())
        return result

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
        batches of ``batch_size`` rows as the stream would send them."""
        subgraph = self.subgraph(domain)
        correct = 0
        for start in range(0, len(frame), batch_size):
            batch = frame.iloc[start : start + batch_size]
            correct += int((subgraph.predict(batch).labels == batch[LABEL].to_numpy()).sum())
        return correct / len(frame)

    def domain_table(self) -> list[dict[str, Any]]:
        """Return one row per domain: tags, state, version, size, last use and accuracy."""
        rows = []
        for record in sorted(self.controller.table.domains.values(), key=lambda r: r.name):
            rows.append({
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
            })
        return rows
