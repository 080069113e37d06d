"""Helpers that every benchmark script uses to describe its machine and write strict JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model(default: str = "unknown") -> str:
    """Return the processor's model name from /proc/cpuinfo, or ``default`` where it has none."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return default
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return default


def plain(value: Any) -> Any:
    """Convert NumPy scalars and non-finite floats (to None) so ``json.dumps(allow_nan=False)`` accepts them."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value
