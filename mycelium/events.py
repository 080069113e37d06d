"""The event log: one JSON object per line for every routing decision, detection and action."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """Convert NumPy scalars and arrays so json.dumps accepts them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Event field of type {type(value).__name__} is not JSON serialisable")


EventSink = Callable[[dict[str, Any]], None]


class EventLog:
    """Appends events to ``path`` (JSON lines) and keeps them in memory for the current run.

    Each sink is called with every event after it is written, for example to forward it to
    Prefect. A sink that raises is logged and skipped, because the event is already recorded
    in the log.
    """

    def __init__(self, path: Path | str | None, sinks: Sequence[EventSink] = ()):
        self.path = Path(path) if path else None
        self.events: list[dict[str, Any]] = []
        self.sinks = list(sinks)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"event": kind, **fields}
        line = json.dumps(event, default=_plain)
        self.events.append(json.loads(line))
        if self.path:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(line + "\n")
        logger.info("%s %s", kind, {k: v for k, v in fields.items() if k in ("domain", "step", "reason")})
        for sink in self.sinks:
            try:
                sink(self.events[-1])
            except Exception:  # noqa: BLE001 - a failing sink must not undo a recorded action
                logger.exception("Event sink %r failed on a %s event; the event stays in %s", sink, kind, self.path)
        return event

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


def read_events(path: Path | str) -> list[dict[str, Any]]:
    """Read an event log written by EventLog."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
