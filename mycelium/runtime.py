"""Process-level settings: the torch device, seeds and the environment Prefect, DVC and GX read."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# Defaults that keep every tool local and quiet. `setdefault` leaves a user's own value alone,
# so the same flows can point at a remote Prefect server through PREFECT_API_URL.
_QUIET_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    # The temporary Prefect server can take about 17 s to start the first time.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def configure_environment(project_root: Path | str | None = None) -> Path:
    """Set the environment defaults for a run rooted at ``project_root`` and return that root.

    Prefect keeps its database under ``<root>/.prefect`` so nothing is written to the home folder.
    Call this before importing prefect.
    """
    root = Path(project_root or Path.cwd()).resolve()
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return root


def pick_device() -> torch.device:
    """Return CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
