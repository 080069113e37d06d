"""Train a fresh expert for a domain and wrap it as a servable subgraph."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch

from mycelium.config import ExpertTraining
from mycelium.drift.combined_ood import fit_domain_check
from mycelium.drift.ood import MahalanobisOOD
from mycelium.errors import EmptyDataError
from mycelium.experts.base import InputSchema, build_expert
from mycelium.experts.training import accuracy, fit, predict_logits
from mycelium.routing.chained import compute_inputs, schema_columns, subgraph_server
from mycelium.routing.chains import ChainPlan
from mycelium.subgraph import Subgraph
from mycelium.validation.expectations import build_expectations

logger = logging.getLogger(__name__)

LABEL = "label"


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != LABEL]


def _expectations(train: pd.DataFrame, settings: ExpertTraining, margin: float) -> dict:
    """Build the data expectations that later batches of the domain must meet.

    Image pixels share one value range: an edge pixel that was always 0 in training may be set
    in a valid new digit, so for global normalisation every column gets the image's range.
    """
    bounds = None
    if settings.normalization == "global":
        values = train[feature_columns(train)].to_numpy(dtype=np.float64)
        image_range = (float(values.min()), float(values.max()))
        bounds = {column: image_range for column in feature_columns(train)}
    return build_expectations(train, label_column=LABEL, range_margin=margin, bounds=bounds)


def train_expert(
    domain: str,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    settings: ExpertTraining,
    *,
    target_fpr: float,
    seed: int,
    min_tail_samples: int = 10,
    expectations_margin: float = 2.0,
    autoencoder: Mapping[str, Any] | None = None,
) -> Subgraph:
    """Train an expert on ``train``; calibrate its OOD reference and measure accuracy on ``holdout``.

    The returned subgraph's ``info`` has the holdout accuracy, the sample counts, the training
    time and the data expectations that later batches of the domain must meet. An image expert's
    reference is a domain check whose autoencoder takes the ``autoencoder`` settings (default:
    those of ``fit_domain_check``).
    """
    for name, frame in (("train", train), ("holdout", holdout)):
        if len(frame) == 0:
            raise EmptyDataError(f"The {name} data of domain {domain!r} is empty; it needs labelled rows.")
    columns = feature_columns(train)
    raw = train[columns].to_numpy(dtype=np.float64)
    config = dict(settings.config)
    image_shape = tuple(config["image_shape"]) if "image_shape" in config else None
    schema = InputSchema.fit(
        columns, raw, per_feature=settings.normalization == "per_feature", image_shape=image_shape
    )
    config.setdefault("in_features", len(columns))
    config.setdefault("n_classes", int(max(train[LABEL].max(), holdout[LABEL].max())) + 1)

    torch.manual_seed(seed)
    expert = build_expert(settings.architecture, config)
    x_train, y_train = schema.transform(raw), torch.as_tensor(train[LABEL].to_numpy(), dtype=torch.long)
    result = fit(
        expert, x_train, y_train, epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size, seed=seed
    )
    expert.eval()

    x_holdout = schema.transform(holdout[columns].to_numpy(dtype=np.float64))
    y_holdout = torch.as_tensor(holdout[LABEL].to_numpy(), dtype=torch.long)
    holdout_accuracy = accuracy(predict_logits(expert, x_holdout).argmax(1), y_holdout)
    if image_shape is None:
        with torch.no_grad():
            reference = MahalanobisOOD(min_tail_samples=min_tail_samples).fit(
                expert.features(x_train).numpy().astype(np.float64),
                expert.features(x_holdout).numpy().astype(np.float64),
                target_fpr=target_fpr,
            )
    else:
        # A CNN's feature space can map noise close to the training images, so image domains are
        # checked by raw-input scores (fit_domain_check's default components), which read no
        # expert features.
        reference = fit_domain_check(None, x_train.numpy(), x_holdout.numpy(), None,
                                     target_fpr=target_fpr, min_tail_samples=min_tail_samples, seed=seed,
                                     autoencoder=autoencoder, image_shape=image_shape,
                                     train_labels=y_train.numpy(), holdout_labels=y_holdout.numpy())
    info = {
        "holdout_accuracy": holdout_accuracy,
        "train_samples": len(train),
        "train_seconds": result.seconds,
        "device": result.device,
        "expectations": _expectations(train, settings, expectations_margin),
    }
    logger.info("Trained %s expert for %s: holdout accuracy %.3f", settings.architecture, domain, holdout_accuracy)
    return Subgraph(domain, schema, expert, [], [reference], info)


def chain_features(plan: ChainPlan, frame: pd.DataFrame, subgraph_of: Callable[[str], Subgraph]) -> pd.DataFrame:
    """Return the input of ``plan``'s domain for request rows ``frame``: the upstream outputs
    of ``subgraph_of(domain)`` for every slot, and the label column when ``frame`` has one."""
    return compute_inputs(plan, frame, subgraph_server(subgraph_of), schema_columns(subgraph_of)).frame


def train_chained_expert(
    plan: ChainPlan,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    settings: ExpertTraining,
    subgraph_of: Callable[[str], Subgraph],
    *,
    target_fpr: float,
    seed: int,
    min_tail_samples: int = 10,
    expectations_margin: float = 2.0,
) -> Subgraph:
    """Train the expert of a chained domain on the upstream outputs of request rows.

    ``train`` and ``holdout`` are in the request format (``a.px_00`` ...). The upstream
    subgraphs stay as they are, and the new expert learns from their outputs. Its ``info``
    records the declared ``upstream`` inputs next to the usual training facts.
    """
    features_train = chain_features(plan, train, subgraph_of)
    features_holdout = chain_features(plan, holdout, subgraph_of)
    subgraph = train_expert(plan.domain, features_train, features_holdout, settings, target_fpr=target_fpr,
                            seed=seed, min_tail_samples=min_tail_samples, expectations_margin=expectations_margin)
    subgraph.info["upstream"] = [asdict(item) for item in plan.stages[-1].nodes[0].inputs]
    return subgraph
