"""Mycelium events forwarded to Prefect, where the deployments' triggers react to them.

Each forwarded event has the resource ``mycelium.domain.<domain>`` and the library event's
fields as its payload: ``domain``, ``window``, ``scores``, ``rows``, ``data_path``,
``version`` and ``bundle_version`` for the three request events.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

DRIFT_DETECTED = "mycelium.drift.detected"
NEW_DOMAIN_DETECTED = "mycelium.domain.new"
COLD_DOMAIN_REQUESTED = "mycelium.domain.requested"

# Library event kind -> Prefect event name. Other kinds stay in the JSON-lines log only.
PREFECT_EVENT_NAMES = {
    "drift_detected": DRIFT_DETECTED,
    "new_domain_detected": NEW_DOMAIN_DETECTED,
    "cold_domain_requested": COLD_DOMAIN_REQUESTED,
    "patch_trained": "mycelium.patch.trained",
    "expert_trained": "mycelium.expert.trained",
    "swept": "mycelium.domain.swept",
    "gate_passed": "mycelium.gate.passed",
    "gate_failed": "mycelium.gate.failed",
}
RESOURCE_PREFIX = "mycelium.domain."


def resource_id(domain: str) -> str:
    return RESOURCE_PREFIX + domain


def prefect_api_configured() -> bool:
    """Return whether this process talks to a Prefect server through ``PREFECT_API_URL``."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL"))


def emit_mycelium_event(name: str, domain: str, payload: dict[str, Any]) -> bool:
    """Emit one Prefect event about ``domain``; return False when no Prefect API is configured."""
    from prefect.events import emit_event

    emitted = emit_event(
        event=name,
        resource={"prefect.resource.id": resource_id(domain), "prefect.resource.name": domain},
        payload=payload,
    )
    return emitted is not None


def flush_events() -> None:
    """Send every queued Prefect event now. Call it before a short-lived process exits."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()


class PrefectEventSink:
    """An EventLog sink that forwards the events named in ``PREFECT_EVENT_NAMES`` to Prefect."""

    def __call__(self, event: dict[str, Any]) -> None:
        name = PREFECT_EVENT_NAMES.get(event["event"])
        if name is None:
            return
        payload = {key: value for key, value in event.items() if key != "event"}
        domain = str(event.get("domain") or "unknown")
        if not emit_mycelium_event(name, domain, payload):
            logger.warning("No Prefect API is configured, so the %s event of %s was not sent; set PREFECT_API_URL.",
                           name, domain)
