"""A domain's servable unit: input schema, frozen expert, ordered patches and their references.

Each depth of the chain (0 = the bare expert, k = expert + patches 1..k) has a reference: an
OOD check (a Mahalanobis model of the expert's features, or a combined domain check for image
experts) fitted on the data that depth was trained on. A patch exists because the data had
drifted away from the lower depths, so the lowest depth whose reference accepts an input
serves it. A patch then serves only data that the depths below it reject, and the expert
keeps serving the old data even when a patch's reference is broad enough to accept it too.
An input that no depth accepts goes to the depth with the lowest OOD ratio (score divided by
that depth's threshold).

A row is accepted when its ratio is at most 1. A batch is accepted unless the reference
rejects every row, or its rejected rows show a rejection rate above ``REJECTION_RATE_TOLERANCE``
times the reference's calibrated false-positive rate (a one-sided binomial test at level
``BATCH_TEST_LEVEL``). The tolerance is there because a reference rejects more of its own
domain's new rows than of its calibration holdout.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import binom

from mycelium.drift.combined_ood import CombinedOOD, domain_check_inputs, ood_from_tensors
from mycelium.drift.ood import MahalanobisOOD
from mycelium.errors import IntegrityError, RoutingError
from mycelium.experts import Expert, InputSchema, build_expert
from mycelium.experts.training import predict_logits
from mycelium.hashing import sha256_file
from mycelium.patches.chain import PatchedExpert
from mycelium.patches.lowrank import LowRankPatch
from mycelium.routing.chains import EMBEDDING, LOGITS

WEIGHTS_FILE = "weights.safetensors"
DESCRIPTION_FILE = "subgraph.json"
# The batch test. In the continual benchmark's digits_shift (target_fpr 0.05, eleven seeds),
# the expert's reference rejected 3.0 to 10.2% of the UCI test rows and the patch's 2.5 to 7.2%
# of the MNIST test rows. Testing against the calibrated rate itself sent whole UCI test sets to
# the patch. With twice that rate, a 50-row batch leaves a depth from 11 rejected rows on.
BATCH_TEST_LEVEL = 0.01
REJECTION_RATE_TOLERANCE = 2.0


@dataclass
class Prediction:
    """Predicted classes, the chain depth that served each row, and each row's OOD ratio."""

    labels: np.ndarray
    depth: np.ndarray
    ood_ratio: np.ndarray


@dataclass
class Subgraph:
    """An expert with its ordered patches and one OOD reference per chain depth."""

    domain: str
    schema: InputSchema
    expert: Expert
    patches: list[LowRankPatch] = field(default_factory=list)
    references: list[MahalanobisOOD | CombinedOOD] = field(default_factory=list)
    # Training facts kept with the weights: expectations, accuracy, sample counts.
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module = PatchedExpert(self.expert, self.patches)

    @property
    def depth(self) -> int:
        return len(self.patches)

    def n_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict().values())

    def fp32_bytes(self) -> int:
        return 4 * self.n_parameters()

    def inputs(self, frame: pd.DataFrame) -> torch.Tensor:
        """Return the normalised input tensor of ``frame``'s schema columns."""
        missing = [c for c in self.schema.columns if c not in frame.columns]
        if missing:
            raise RoutingError(
                f"Domain {self.domain!r} needs columns {missing} that the batch lacks; "
                "send the batch to the domain whose schema it has."
            )
        return self.schema.transform(frame[list(self.schema.columns)].to_numpy())

    @torch.no_grad()
    def base_features(self, x: torch.Tensor) -> np.ndarray:
        self.module.eval()
        return self.expert.features(x).numpy().astype(np.float64)

    def ood_ratios(self, x: torch.Tensor) -> np.ndarray:
        """Return, per row and depth, the OOD score divided by that depth's threshold."""
        features = self.base_features(x)
        inputs = x.numpy().astype(np.float64)
        ratios = []
        for ref in self.references:
            if isinstance(ref, CombinedOOD):
                ratios.append(ref.score(domain_check_inputs(features, inputs)))
            else:
                ratios.append(ref.score(features) / ref.threshold)
        return np.stack(ratios, axis=1)

    def rejection_rates(self) -> np.ndarray:
        """Return, per depth, the fraction of in-domain rows its reference was calibrated to reject."""
        rates = [reference.target_fpr for reference in self.references]
        missing = [depth for depth, rate in enumerate(rates) if rate is None]
        if missing:
            raise RoutingError(
                f"The OOD references of {self.domain!r} at depths {missing} have no target_fpr, so no "
                "depth can be chosen for a batch; refit them with fit(), which records it."
            )
        return np.asarray(rates, dtype=np.float64)

    @torch.no_grad()
    def predict(self, frame: pd.DataFrame, *, per_row: bool = False) -> Prediction:
        """Predict ``frame`` with the lowest chain depth whose reference accepts it.

        By default one depth serves the whole batch: the lowest depth that accepts the batch by
        the binomial test of the module docstring, or the depth with the lowest median OOD ratio
        when none does. Rows of one batch come from one source, and a batch separates an old
        regime from a new one far better than single rows do, where a row misrouted to a patch
        costs accuracy on old data. ``per_row=True`` chooses a depth for every row instead: the
        lowest depth whose threshold the row is within, or the lowest ratio when none is.
        """
        x = self.inputs(frame)
        ratios = self.ood_ratios(x)
        depth = _serving_depth(ratios, self.rejection_rates(), per_row=per_row)
        labels = np.empty(len(frame), dtype=np.int64)
        for level in np.unique(depth):
            rows = np.flatnonzero(depth == level)
            logits = predict_logits(_AtDepth(self.module, int(level)), x[rows])
            labels[rows] = logits.argmax(dim=1).numpy()
        return Prediction(labels, depth, ratios[np.arange(len(frame)), depth])

    @torch.no_grad()
    def outputs(
        self, frame: pd.DataFrame, kinds: tuple[str, ...], *, groups: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Return the outputs that a chained domain reads, and the chain depth that served each row.

        ``kinds`` contains ``"logits"`` and/or ``"embedding"`` (the expert's penultimate
        features). ``groups`` gives each row a group id, such as the slot it fills, and all rows
        form one group by default. Each group is served by one depth, chosen as ``predict``
        chooses it for a batch, so a patch changes only the outputs of the groups it serves.
        """
        unknown = sorted(set(kinds) - {LOGITS, EMBEDDING})
        if unknown:
            raise RoutingError(f"Unknown output kinds {unknown} of {self.domain!r}; use {LOGITS!r} or {EMBEDDING!r}.")
        x = self.inputs(frame)
        ratios = self.ood_ratios(x)
        rates = self.rejection_rates()
        depth = np.empty(len(frame), dtype=np.int64)
        for group in np.unique(groups) if groups is not None else [None]:
            rows = slice(None) if group is None else np.flatnonzero(groups == group)
            depth[rows] = _serving_depth(ratios[rows], rates, per_row=False)
        self.module.eval()
        parts: dict[str, list[tuple[np.ndarray, torch.Tensor]]] = {kind: [] for kind in kinds}
        for level in np.unique(depth):
            rows = np.flatnonzero(depth == level)
            if LOGITS in kinds:
                parts[LOGITS].append((rows, self.module(x[rows], depth=int(level))))
            if EMBEDDING in kinds:
                parts[EMBEDDING].append((rows, self.module.features(x[rows], depth=int(level))))
        values = {}
        for kind, pieces in parts.items():
            width = pieces[0][1].shape[1] if pieces else 0
            array = np.empty((len(frame), width), dtype=np.float32)
            for rows, tensor in pieces:
                array[rows] = tensor.numpy()
            values[kind] = array
        return values, depth

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return every weight, prefixed ``expert.`` or ``patches.<i>.``, detached and contiguous."""
        tensors = {f"expert.{k}": v for k, v in self.expert.state_dict().items()}
        for index, patch in enumerate(self.patches):
            tensors.update({f"patches.{index}.{k}": v for k, v in patch.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def reference_tensors(self) -> dict[str, torch.Tensor]:
        """Return the OOD references' mean and precision tensors, keyed ``<depth>.mean`` etc."""
        tensors = {}
        for depth, reference in enumerate(self.references):
            tensors.update({f"{depth}.{name}": value for name, value in reference.to_tensors().items()})
        return tensors

    def describe(self, *, reference_tensors_inline: bool = True) -> dict[str, Any]:
        """Return the JSON description needed to rebuild this subgraph from its weights.

        With ``reference_tensors_inline=False`` the references carry only their calibration
        metadata, and ``from_parts`` needs ``reference_tensors()`` beside the description.
        """
        references = [
            reference_to_json(ref) if reference_tensors_inline else {"metadata": ref.metadata()}
            for ref in self.references
        ]
        return {
            "domain": self.domain,
            "architecture": self.expert.architecture,
            "config": self.expert.config,
            "schema": self.schema.to_dict(),
            "patches": [patch.describe() for patch in self.patches],
            "references": references,
            "info": self.info,
        }

    @classmethod
    def from_parts(
        cls,
        description: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        reference_tensors: dict[str, torch.Tensor] | None = None,
    ) -> "Subgraph":
        """Rebuild a subgraph from ``describe()`` output and ``state_dict()`` tensors, plus
        ``reference_tensors()`` when the description does not carry them inline."""
        expert = build_expert(description["architecture"], description["config"])
        expert.load_state_dict(_strip(tensors, "expert."))
        patches = []
        for index, settings in enumerate(description["patches"]):
            patch = LowRankPatch(expert, rank=settings["rank"], alpha=settings["alpha"])
            patch.load_state_dict(_strip(tensors, f"patches.{index}."))
            patches.append(patch)
        expert.eval()
        return cls(
            domain=description["domain"],
            schema=InputSchema.from_dict(description["schema"]),
            expert=expert,
            patches=patches,
            references=[
                reference_from_json(r) if "mean" in r or r.get("kind") == "combined"
                else ood_from_tensors(_strip(reference_tensors or {}, f"{depth}."), r["metadata"])
                for depth, r in enumerate(description["references"])
            ],
            info=dict(description.get("info", {})),
        )


def _serving_depth(ratios: np.ndarray, rejection_rates: np.ndarray, *, per_row: bool) -> np.ndarray:
    """Return the chain depth that serves each row: the lowest depth that accepts the row
    (``per_row``) or the batch, else the depth with the lowest ratio (median over the batch).

    ``ratios`` has one row per input row and one column per depth. ``rejection_rates`` gives
    each depth's calibrated false-positive rate, which the batch test reads.
    """
    accepted = ratios <= 1.0
    if per_row:
        return np.where(accepted.any(axis=1), accepted.argmax(axis=1), ratios.argmin(axis=1))
    accepting = np.flatnonzero(_accepts_batch(accepted, rejection_rates))
    depth = int(accepting[0]) if len(accepting) else int(np.median(ratios, axis=0).argmin())
    return np.full(len(ratios), depth)


def _accepts_batch(accepted: np.ndarray, rejection_rates: np.ndarray) -> np.ndarray:
    """Return, per depth, whether its reference accepts the batch whose per-row acceptance is given.

    A depth rejects the batch when it rejects every row, or when at least as many rejected
    rows as it has would occur with probability at most ``BATCH_TEST_LEVEL`` if each row were
    rejected with ``REJECTION_RATE_TOLERANCE`` times the depth's calibrated rate. The first
    condition decides for a single row, where the binomial test cannot reach that level.
    """
    n_rows = accepted.shape[0]
    rejected = n_rows - accepted.sum(axis=0)
    tolerated = np.minimum(1.0, REJECTION_RATE_TOLERANCE * rejection_rates)
    # binom.sf(k - 1, n, p) is P(X >= k) for X ~ Binomial(n, p).
    tail = binom.sf(rejected - 1, n_rows, tolerated)
    return (rejected < n_rows) & (tail > BATCH_TEST_LEVEL)


class _AtDepth(torch.nn.Module):
    def __init__(self, module: PatchedExpert, depth: int):
        super().__init__()
        self.module = module
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, depth=self.depth)


def reference_to_json(reference: MahalanobisOOD | CombinedOOD) -> dict[str, Any]:
    """Return a fitted OOD reference as plain JSON (mean, precision matrix and calibration)."""
    if isinstance(reference, CombinedOOD):
        return reference.to_json()
    tensors = reference.to_tensors()
    return {
        "metadata": reference.metadata(),
        "mean": tensors["mean"].tolist(),
        "precision": tensors["precision"].tolist(),
    }


def reference_from_json(data: dict[str, Any]) -> MahalanobisOOD | CombinedOOD:
    if data.get("kind") == "combined":
        return CombinedOOD.from_json(data)
    tensors = {name: torch.tensor(data[name], dtype=torch.float64) for name in ("mean", "precision")}
    return MahalanobisOOD.from_tensors(tensors, data["metadata"])


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_subgraph(subgraph: Subgraph, folder: Path) -> Path:
    """Write the hot copy of ``subgraph`` to ``folder`` atomically, with the weights' sha256."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    save_file(subgraph.state_dict(), str(staging / WEIGHTS_FILE))
    description = subgraph.describe()
    description["weights_sha256"] = sha256_file(staging / WEIGHTS_FILE)
    (staging / DESCRIPTION_FILE).write_text(json.dumps(description))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def load_subgraph(folder: Path) -> Subgraph:
    """Load a hot copy written by save_subgraph, checking the weights' sha256 first."""
    folder = Path(folder)
    description_path, weights_path = folder / DESCRIPTION_FILE, folder / WEIGHTS_FILE
    if not description_path.exists() or not weights_path.exists():
        raise IntegrityError(
            f"Hot copy in {folder} is incomplete ({DESCRIPTION_FILE} or {WEIGHTS_FILE} missing); "
            "restore the domain from cold storage with `mycelium remember`."
        )
    description = json.loads(description_path.read_text())
    actual = sha256_file(weights_path)
    if actual != description.get("weights_sha256"):
        raise IntegrityError(
            f"{weights_path} has sha256 {actual}, expected {description.get('weights_sha256')}; "
            "the file was changed or truncated. Restore the domain from cold storage."
        )
    return Subgraph.from_parts(description, load_file(str(weights_path)))
