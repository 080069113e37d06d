"""Stage train_experts: one expert per initial domain, as params.yaml configures it."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from mycelium.config import Params
from mycelium.experts.fitting import train_chained_expert, train_expert
from mycelium.pipeline.prepare import read_part
from mycelium.routing.chains import ChainPlan, UpstreamInput, plan_chain
from mycelium.routing.tags import safe_name
from mycelium.subgraph import Subgraph, load_subgraph, save_subgraph

logger = logging.getLogger(__name__)


def train_domain(params: Params, domain: str) -> dict[str, Any]:
    """Train the expert of ``domain`` on its table's train part and save it under paths.models.

    A chained domain trains on the outputs of its upstream experts, which must be saved
    already (``Params.training_order`` puts them first).
    """
    settings = params.experts[domain]
    train = read_part(params, settings.dataset, "train")
    calibration = read_part(params, settings.dataset, "calibration")
    if settings.upstream:
        subgraph = train_chained_expert(chain_plan(params, domain), train, calibration, settings,
                                        saved_subgraphs(params), target_fpr=params.ood.target_fpr,
                                        seed=params.seed, min_tail_samples=params.ood.min_tail_samples)
    else:
        subgraph = train_expert(domain, train, calibration, settings, target_fpr=params.ood.target_fpr,
                                seed=params.seed, min_tail_samples=params.ood.min_tail_samples)
    folder = save_subgraph(subgraph, params.paths.models / safe_name(domain))
    return {
        "domain": domain,
        "dataset": settings.dataset,
        "architecture": settings.architecture,
        "upstream": [item.model_dump() for item in settings.upstream],
        "parameters": subgraph.n_parameters(),
        "holdout_accuracy": subgraph.info["holdout_accuracy"],
        "train_seconds": subgraph.info["train_seconds"],
        "folder": str(folder.relative_to(params.paths.models)),
    }


def upstream_inputs(params: Params, domain: str) -> list[UpstreamInput]:
    """Return the upstream inputs that params.yaml declares for ``domain`` (none for other domains)."""
    settings = params.experts.get(domain)
    return [UpstreamInput(**item.model_dump()) for item in settings.upstream] if settings else []


def chain_plan(params: Params, domain: str) -> ChainPlan:
    """Return the chain of ``domain`` as params.yaml declares it, upstream domains first."""
    return plan_chain(domain, lambda name: upstream_inputs(params, name))


def saved_subgraphs(params: Params) -> Callable[[str], Subgraph]:
    """Return a function that loads (once) the subgraph that this stage saved for a domain."""
    return functools.cache(lambda domain: load_subgraph(params.paths.models / safe_name(domain)))


def write_summary(params: Params, rows: list[dict[str, Any]]) -> None:
    """Write models/experts.json, which the stream stage reads to register the experts."""
    (params.paths.models / "experts.json").write_text(json.dumps({r["domain"]: r for r in rows}, indent=1))
