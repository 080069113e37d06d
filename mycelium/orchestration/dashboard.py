"""Artifacts that the Prefect dashboard shows: the domain table, Remembering progress, the
numbers of each validation gate and the drift scores.

Every artifact is created in the current flow or task run when there is one, so the dashboard
lists it under that run and under its key (Artifacts page).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from mycelium.orchestration.names import slug

logger = logging.getLogger(__name__)

DOMAINS_KEY = "mycelium-domains"
DRIFT_KEY = "mycelium-drift"


def remembering_key(domain: str) -> str:
    return f"mycelium-remembering-{slug(domain)}"


def gate_key(domain: str) -> str:
    return f"mycelium-gate-{slug(domain)}"


def _time(seconds: float | None) -> str:
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def domain_rows(table_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Format ``Mycelium.domain_table()`` rows for the dashboard: state, version, size, last use, accuracy."""
    return [
        {
            "domain": row["domain"],
            "state": row["state"],
            "version": row["version"],
            "patches": row["patches"],
            "size_bytes": row["fp32_bytes"],
            "cold_version": row["cold_version"],
            "last_used": _time(row["last_used"]),
            "uses": row["uses"],
            "accuracy": None if row["holdout_accuracy"] is None else round(float(row["holdout_accuracy"]), 4),
        }
        for row in table_rows
    ]


def publish_domains(table_rows: list[dict[str, Any]], description: str) -> None:
    """Publish the ``mycelium-domains`` table artifact as a new version of that key."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=DOMAINS_KEY, table=domain_rows(table_rows), description=description)


def publish_drift(checks: list[dict[str, Any]], description: str) -> None:
    """Publish the drift scores of ``drift_check`` events as the ``mycelium-drift`` table."""
    from prefect.artifacts import create_table_artifact

    rows = []
    for event in checks:
        window = event.get("window") or {}
        rows.append({
            "step": event.get("step"),
            "domain": event.get("domain"),
            "status": window.get("status"),
            "score": window.get("score"),
            "threshold": window.get("threshold"),
            "persistent": event.get("persistent"),
            "performance_drift": event.get("performance_drift"),
            "action": (event.get("decision") or {}).get("action"),
        })
    if rows:
        create_table_artifact(key=DRIFT_KEY, table=rows, description=description)


class DashboardSink:
    """An EventLog sink that keeps the dashboard current while the library works.

    ``remembering`` publishes the domain table, where the domain shows ``remembering``, and
    starts a progress artifact at 10 %. ``bundle_loaded`` moves it to 50 %. ``gate_passed``
    and ``gate_failed`` finish it and publish the gate's numbers and the domain table again.
    Patches, new experts and sweeps publish the domain table.

    Args:
        table: returns the current ``Mycelium.domain_table()`` rows.
    """

    def __init__(self, table):
        self.table = table
        self._progress: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

        kind, domain = event["event"], event.get("domain")
        if kind == "remembering":
            publish_domains(self.table(), f"{domain} is remembering: restore, validation gate, then serve.")
            self._progress[domain] = create_progress_artifact(
                progress=10.0, key=remembering_key(domain),
                description=f"Remembering {domain} from bundle {event.get('version')}: restore, gate, serve.")
        elif kind == "bundle_loaded" and domain in self._progress:
            update_progress_artifact(self._progress[domain], progress=50.0)
        elif kind in ("gate_passed", "gate_failed"):
            if domain in self._progress:
                update_progress_artifact(self._progress.pop(domain), progress=100.0)
            numbers = {k: v for k, v in event.items() if k not in ("event", "domain") and not isinstance(v, (list, dict))}
            create_table_artifact(key=gate_key(domain), table=[numbers],
                                  description=f"Validation gate of {domain}: {kind.replace('_', ' ')}.")
            publish_domains(self.table(), f"Domains after the validation gate of {domain} ({kind.replace('_', ' ')}).")
        elif kind in ("patch_trained", "expert_trained", "swept"):
            publish_domains(self.table(), f"Domains after {kind.replace('_', ' ')}: {domain}.")
