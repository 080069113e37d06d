"""Stage train_experts: one expert per initial domain, as params.yaml configures it."""

from __future__ import annotations

import json
import logging
from typing import Any

from mycelium.config import Params
from mycelium.experts.fitting import train_expert
from mycelium.pipeline.prepare import read_part
from mycelium.routing.tags import safe_name
from mycelium.subgraph import save_subgraph

logger = logging.getLogger(__name__)


def train_domain(params: Params, domain: str) -> dict[str, Any]:
    """Train the expert of ``domain`` on its table's train part and save it under paths.models."""
    settings = params.experts[domain]
    train = read_part(params, settings.dataset, "train")
    calibration = read_part(params, settings.dataset, "calibration")
    subgraph = train_expert(domain, train, calibration, settings, target_fpr=params.ood.target_fpr,
                            seed=params.seed, min_tail_samples=params.ood.min_tail_samples)
    folder = save_subgraph(subgraph, params.paths.models / safe_name(domain))
    return {
        "domain": domain,
        "dataset": settings.dataset,
        "architecture": settings.architecture,
        "parameters": subgraph.n_parameters(),
        "holdout_accuracy": subgraph.info["holdout_accuracy"],
        "train_seconds": subgraph.info["train_seconds"],
        "folder": str(folder.relative_to(params.paths.models)),
    }


def write_summary(params: Params, rows: list[dict[str, Any]]) -> None:
    """Write models/experts.json, which the stream stage reads to register the experts."""
    (params.paths.models / "experts.json").write_text(json.dumps({r["domain"]: r for r in rows}, indent=1))
