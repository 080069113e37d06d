"""The Mycelium instance that orchestrated flows work with."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from mycelium.config import Params
from mycelium.events import EventLog
from mycelium.orchestration.dashboard import DashboardSink
from mycelium.orchestration.events import PrefectEventSink, prefect_api_configured
from mycelium.system import Mycelium

logger = logging.getLogger(__name__)


def orchestrated_system(params: Params) -> Mycelium:
    """Return a Mycelium whose ingestion defers patches, new experts and restores to events.

    Its events go to ``<run>/events.jsonl``, to Prefect (when ``PREFECT_API_URL`` is set, so
    the deployments' triggers start the deferred actions) and to the dashboard artifacts.
    """
    events = EventLog(params.paths.run / "events.jsonl")
    system = Mycelium(params, events=events, defer_actions=True)
    if prefect_api_configured():
        events.sinks.append(PrefectEventSink())
    else:
        logger.info("PREFECT_API_URL is not set, so drift, new-domain and cold-domain events start no "
                    "deployment; run `mycelium orchestrate up` or point PREFECT_API_URL at a server.")
    events.sinks.append(DashboardSink(system.domain_table))
    return system


def late_by_s(scheduled: datetime | None, now: datetime) -> float:
    """Return how many seconds ``now`` is past ``scheduled`` (0 when there is no schedule)."""
    if scheduled is None:
        return 0.0
    return max(0.0, (now - scheduled).total_seconds())


def describe_ingest_outcome(outcome: dict[str, Any]) -> str:
    """Return the log line of one ingested batch: its domain and version, accuracy and actions.

    ``outcome`` is an item of the ingest flow's result; a quarantined batch gives its path and error.
    """
    batch = outcome["batch"]
    if "quarantined" in outcome:
        return f"{batch}: quarantined in {outcome['quarantined']}: {outcome['error']}"
    target = (f"{outcome['domain']} v{outcome['version']} ({outcome['state']})" if outcome["domain"]
              else "no domain accepted it")
    accuracy = f", accuracy {outcome['accuracy']:.3f}" if outcome["accuracy"] is not None else ""
    actions = ", ".join(outcome["actions"]) or "none"
    return f"{batch}: {outcome['rows']} rows -> {target}{accuracy}; actions: {actions}"
