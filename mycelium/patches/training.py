"""Train a patch on new data beside a frozen expert, and prove the expert did not change."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mycelium.config import Patch
from mycelium.drift.combined_ood import fit_domain_check
from mycelium.drift.ood import MahalanobisOOD
from mycelium.errors import DataValidationError, EmptyDataError, IntegrityError
from mycelium.experts.training import accuracy, fit, predict_logits
from mycelium.hashing import sha256_state_dict
from mycelium.patches.chain import PatchedExpert
from mycelium.patches.lowrank import LowRankPatch
from mycelium.subgraph import Subgraph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchReport:
    """Record of one patch training: sample counts, accuracies, time and the expert hashes."""

    domain: str
    depth: int
    train_samples: int
    holdout_samples: int
    accuracy_before: float
    accuracy_after: float
    seconds: float
    parameters_added: int
    expert_sha256_before: str
    expert_sha256_after: str


# Fewer rows than this never train a patch, whatever the OOD settings.
MIN_PATCH_ROWS = 10


def _holdout_size(n_rows: int, holdout_fraction: float) -> int:
    return max(1, int(round(holdout_fraction * n_rows)))


def min_patch_rows(needed_holdout: int, holdout_fraction: float) -> int:
    """Return how many labelled rows give a held-out part of ``needed_holdout`` rows, and at least MIN_PATCH_ROWS.

    Rounding the held-out part may reach the target one or two rows earlier, so this is a
    sufficient count that a user can check by hand, not always the smallest.
    """
    return max(MIN_PATCH_ROWS, math.ceil(needed_holdout / holdout_fraction))


def train_patch(
    subgraph: Subgraph,
    frame: pd.DataFrame,
    settings: Patch,
    *,
    target_fpr: float,
    seed: int,
    min_tail_samples: int = 10,
    holdout_fraction: float = 0.2,
    autoencoder: Mapping[str, Any] | None = None,
) -> tuple[Subgraph, PatchReport]:
    """Return ``subgraph`` extended by a new low-rank patch trained only on ``frame``.

    The expert stays frozen: its sha256 is taken before and after, and a difference raises
    IntegrityError. The new depth gets an OOD reference fitted on ``frame``, so it serves the
    data it was trained on and the lower depths keep serving theirs. For an image expert that
    reference is a domain check whose autoencoder takes the ``autoencoder`` settings (default:
    those of ``fit_domain_check``).
    """
    needed_holdout = math.ceil(min_tail_samples / target_fpr)
    needed_rows = min_patch_rows(needed_holdout, holdout_fraction)
    if len(frame) < MIN_PATCH_ROWS:
        reason = ""
        if needed_rows > MIN_PATCH_ROWS:
            reason = (f", because calibrating the new depth's OOD check needs {needed_holdout} held-out rows "
                   f"(ood.min_tail_samples={min_tail_samples} / ood.target_fpr={target_fpr})")
        raise EmptyDataError(
            f"Patch training for {subgraph.domain!r} got {len(frame)} rows; collect at least {needed_rows} "
            f"labelled rows{reason}."
        )
    if "label" not in frame:
        raise DataValidationError(f"Patch data for {subgraph.domain!r} has no 'label' column; add the true class of each row.")
    n_classes = subgraph.expert.n_classes
    labels = pd.to_numeric(frame["label"], errors="coerce")
    invalid = frame["label"][~(labels.notna() & (labels >= 0) & (labels < n_classes) & (labels % 1 == 0))]
    if len(invalid):
        raise DataValidationError(
            f"Patch data for {subgraph.domain!r} has {len(invalid)} labels outside the expert's classes "
            f"0..{n_classes - 1}, e.g. {invalid.iloc[:3].tolist()} at rows {invalid.index[:3].tolist()}; "
            "fix those labels or train a new expert for the new classes."
        )
    n_holdout = _holdout_size(len(frame), holdout_fraction)
    if n_holdout < needed_holdout:
        raise EmptyDataError(
            f"Patch training for {subgraph.domain!r} got {len(frame)} rows, so its held-out part has "
            f"{n_holdout}; calibrating the new depth's OOD check at target_fpr={target_fpr} with "
            f"min_tail_samples={min_tail_samples} needs {needed_holdout} held-out rows. Collect at least "
            f"{needed_rows} labelled rows, or raise ood.target_fpr in params.yaml."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    holdout, train = frame.iloc[order[:n_holdout]], frame.iloc[order[n_holdout:]]
    x_train, x_holdout = subgraph.inputs(train), subgraph.inputs(holdout)
    y_train = torch.as_tensor(train["label"].to_numpy(), dtype=torch.long)
    y_holdout = torch.as_tensor(holdout["label"].to_numpy(), dtype=torch.long)

    before = sha256_state_dict(subgraph.expert.state_dict())
    patch = LowRankPatch(subgraph.expert, rank=settings.rank, alpha=settings.alpha, seed=seed)
    chain = PatchedExpert(subgraph.expert, [*subgraph.patches, patch])
    accuracy_before = accuracy(predict_logits(chain, x_holdout, batch_size=4096).argmax(1), y_holdout)
    result = fit(
        chain, x_train, y_train, epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size, seed=seed,
        parameters=patch.parameters(),
    )
    accuracy_after = accuracy(predict_logits(chain, x_holdout).argmax(1), y_holdout)
    after = sha256_state_dict(subgraph.expert.state_dict())
    if before != after:
        raise IntegrityError(
            f"Expert of {subgraph.domain!r} changed during patch training (sha256 {before} -> {after}); "
            "its parameters must have requires_grad=False."
        )

    if subgraph.schema.image_shape is None:
        reference = MahalanobisOOD(min_tail_samples=min_tail_samples).fit(
            subgraph.base_features(x_train), subgraph.base_features(x_holdout), target_fpr=target_fpr
        )
    else:
        # fit_domain_check's default components read no expert features. A patch's check is not
        # cross-fitted: that fits each component six times, and the continual benchmark's patch
        # target allows the patch with its check half the CPU time of retraining on all data.
        reference = fit_domain_check(None, x_train.numpy(), x_holdout.numpy(), None,
                                     target_fpr=target_fpr, min_tail_samples=min_tail_samples, seed=seed,
                                     autoencoder=autoencoder, image_shape=subgraph.schema.image_shape,
                                     train_labels=y_train.numpy(), cross_fit_folds=0)
    patched = Subgraph(
        subgraph.domain,
        subgraph.schema,
        subgraph.expert,
        [*subgraph.patches, patch],
        [*subgraph.references, reference],
        dict(subgraph.info),
    )
    report = PatchReport(
        subgraph.domain,
        patched.depth,
        len(train),
        len(holdout),
        accuracy_before,
        accuracy_after,
        result.seconds,
        sum(p.numel() for p in patch.parameters()),
        before,
        after,
    )
    logger.info(
        "Patch %d for %s: holdout accuracy %.3f -> %.3f", report.depth, report.domain, accuracy_before, accuracy_after
    )
    return patched, report
