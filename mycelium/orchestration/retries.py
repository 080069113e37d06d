"""Retry options for Prefect tasks whose failures can be transient: a DVC push, a file lock."""

from __future__ import annotations

from typing import Any

from mycelium.config import Orchestration
from mycelium.errors import RememberTimeoutError, StorageError

TRANSIENT_ERRORS = (StorageError, RememberTimeoutError)


def backoff_delays(settings: Orchestration) -> list[float]:
    """Return the wait before each retry: ``retry_delay_s`` doubled at every attempt."""
    return [settings.retry_delay_s * 2**attempt for attempt in range(settings.retries)]


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:  # noqa: BLE001 - any other failure is not worth a retry
        return False
    return False


def transient_retries(settings: Orchestration) -> dict[str, Any]:
    """Return ``Task.with_options`` arguments that retry StorageError and RememberTimeoutError
    ``orchestration.retries`` times with exponential backoff and 20 % jitter, and nothing else."""
    return {
        "retries": settings.retries,
        "retry_delay_seconds": backoff_delays(settings),
        "retry_jitter_factor": 0.2,
        "retry_condition_fn": _is_transient,
    }
