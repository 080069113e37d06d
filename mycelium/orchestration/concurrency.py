"""Prefect global concurrency limits: one training per domain, one cold-store writer at a time.

A slot is held on a lease that the holding process renews (Prefect renews it at 75 % of the
lease). A run killed while it holds a slot stops renewing, and the server frees the slot when
the lease expires, ``orchestration.training_lease_s`` (at least 60 s) later. Slot decay is not
used because it would free the slot of a training that is still running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from mycelium.config import Orchestration
from mycelium.orchestration.names import slug

logger = logging.getLogger(__name__)

COLD_STORE_LIMIT = "mycelium-cold-store"


def training_limit_name(key: str) -> str:
    """Return the name of the limit that serializes trainings of ``key`` (a domain or a queue)."""
    return f"mycelium-training-{slug(key)}"


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` with ``limit`` slots unless it exists."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            logger.info("Created concurrency limit %s with %d slot(s).", name, limit)
        except ObjectAlreadyExists:
            pass


@contextmanager
def slot(name: str, settings: Orchestration) -> Iterator[None]:
    """Hold one slot of the limit ``name`` (created with one slot if missing) for the block.

    Raises:
        TimeoutError: no slot came free within ``orchestration.slot_timeout_s``.
    """
    from prefect.concurrency.sync import concurrency

    ensure_limit(name)
    with concurrency(name, occupy=1, timeout_seconds=settings.slot_timeout_s,
                     lease_duration=settings.training_lease_s, strict=True):
        yield


def training_slot(key: str, settings: Orchestration) -> AbstractContextManager[None]:
    """Hold the training slot of ``key`` for the block: one training per domain at a time."""
    return slot(training_limit_name(key), settings)


def cold_store_slot(settings: Orchestration) -> AbstractContextManager[None]:
    """Hold the cold-store slot for the block: one sweep or restore writes to the DVC repository
    at a time, across machines. On one machine the store's file lock also serializes them."""
    return slot(COLD_STORE_LIMIT, settings)
