"""A new-domain check that combines several OOD scores of one domain, calibrated jointly.

One score is not enough. A CNN's feature space can map uniform noise close to the digits it
was trained on, while a raw-input score (autoencoder reconstruction error, Mahalanobis
distance on standardized pixels) rejects noise but is weaker between two kinds of handwriting.
A row is accepted only when every score accepts it. Every added component takes part of the
false-positive budget, so a component that separates domains worse than the others lowers
the check's per-row AUROC. benchmarks/detection.py measures the combinations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from mycelium.drift.autoencoder import AutoencoderOOD
from mycelium.drift.gradient_subspace import GradientSubspaceOOD
from mycelium.drift.ood import MahalanobisOOD, _as_features
from mycelium.drift.row_statistics import RowStatisticsOOD
from mycelium.drift.calibration import require_holdout_rows
from mycelium.errors import ConfigError


class OODScore(Protocol):
    """A fitted per-row OOD score that can be saved as tensors and JSON."""

    def score(self, inputs: Any) -> np.ndarray: ...

    def to_tensors(self) -> dict[str, torch.Tensor]: ...

    def metadata(self) -> dict[str, Any]: ...


DETECTOR_KINDS: dict[str, type] = {
    "mahalanobis": MahalanobisOOD,
    "autoencoder": AutoencoderOOD,
    "row_statistics": RowStatisticsOOD,
    "gradient_subspace": GradientSubspaceOOD,
}
"""Detector classes that `CombinedOOD` can save and rebuild, by the name stored in its metadata."""

_BISECTION_STEPS = 60

# Component names of a domain's check, as `fit_domain_check` builds it.
FEATURES = "features"
AUTOENCODER = "autoencoder"
ROW_STATISTICS = "row_statistics"
GRADIENT = "gradient"
GRADIENT_DESKEWED = "gradient_deskewed"
CHECK_COMPONENTS = (FEATURES, AUTOENCODER, ROW_STATISTICS, GRADIENT, GRADIENT_DESKEWED)
"""Every component that `fit_domain_check` can build."""
IMAGE_CHECK = (GRADIENT, GRADIENT_DESKEWED)
"""The components of an image domain's check by default."""


class CombinedOOD:
    """Accept a row only when each component score is at most its own threshold.

    Each component's threshold is the same quantile level q of its scores on held-out
    in-domain rows. Calibrating each component at target_fpr alone would reject up to
    ``len(detectors) * target_fpr`` of in-domain rows. So q is the lowest level at which the
    fraction of held-out rows rejected by any component is at most target_fpr.

    The combined score of a row is the largest ratio of a component's score to that
    component's threshold, so `threshold` is 1.0 and a row is accepted when its score is at
    most 1.0.

    Parameters
    ----------
    detectors
        Fitted detectors by name, for example ``{"features": MahalanobisOOD, "inputs":
        AutoencoderOOD}``. Their own thresholds are not used.
    min_tail_samples
        Minimum expected number of held-out rows above the joint threshold: the holdout
        needs at least ``min_tail_samples / target_fpr`` rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> train, holdout = rng.normal(size=(500, 3)), rng.normal(size=(400, 3))
    >>> detectors = {"a": MahalanobisOOD().fit(train, holdout, target_fpr=0.05),
    ...              "b": MahalanobisOOD().fit(train[:, :2], holdout[:, :2], target_fpr=0.05)}
    >>> combined = CombinedOOD(detectors).fit({"a": holdout, "b": holdout[:, :2]}, target_fpr=0.05)
    >>> round(combined.calibrated_fpr, 3)
    0.05
    >>> combined.accepts({"a": np.zeros((1, 3)), "b": np.zeros((1, 2))}).tolist()
    [True]
    """

    threshold = 1.0

    def __init__(self, detectors: Mapping[str, OODScore], *, min_tail_samples: int = 10) -> None:
        if not detectors:
            raise ConfigError("detectors is empty; pass at least one fitted detector by name.")
        unknown = {name: type(d).__name__ for name, d in detectors.items() if _kind(d) is None}
        if unknown:
            raise ConfigError(
                f"detectors {unknown} are not of a registered kind {sorted(DETECTOR_KINDS)}; "
                "add the class to DETECTOR_KINDS so the combined check can be saved."
            )
        if isinstance(min_tail_samples, bool) or not isinstance(min_tail_samples, int) or min_tail_samples < 1:
            raise ConfigError(f"min_tail_samples must be an integer >= 1, got {min_tail_samples!r}.")
        self.detectors = dict(detectors)
        self.min_tail_samples = min_tail_samples
        self.thresholds: dict[str, float] | None = None
        self.level: float | None = None
        self.target_fpr: float | None = None
        self.calibrated_fpr: float | None = None
        self.component_fpr: dict[str, float] | None = None
        self.n_holdout: int | None = None

    def fit(self, holdout_inputs: Mapping[str, Any], *, target_fpr: float) -> CombinedOOD:
        """Set the component thresholds from held-out in-domain rows.

        Parameters
        ----------
        holdout_inputs
            For each detector name, that detector's input for the same held-out rows, in the
            same order. Use rows that no detector was trained on.
        target_fpr
            Fraction of in-domain rows that the joint check may reject, in (0, 1).

        Raises
        ------
        ConfigError
            If target_fpr is outside (0, 1), the holdout is too small, or an input is missing.
        ValueError
            If the inputs have different numbers of rows.
        """
        return self.fit_scores(self._component_scores(holdout_inputs), target_fpr=target_fpr)

    def fit_scores(self, holdout_scores: Mapping[str, np.ndarray], *, target_fpr: float) -> CombinedOOD:
        """Set the component thresholds from each component's scores of the same held-out in-domain rows.

        Use this where the scores come from models that did not see their rows, for example the
        out-of-fold scores of cross-fitting. The raised errors are those of `fit`.
        """
        if not 0 < target_fpr < 1:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}.")
        missing = sorted(set(self.detectors) - set(holdout_scores))
        if missing:
            raise ConfigError(f"Scores of detectors {missing} are missing; pass one array per detector name {sorted(self.detectors)}.")
        scores = {name: np.asarray(holdout_scores[name], dtype=np.float64).reshape(-1) for name in self.detectors}
        lengths = {name: values.shape[0] for name, values in scores.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"The holdout scores have different numbers of rows {lengths}; score the same rows with each detector.")
        n_rows = next(iter(scores.values())).shape[0]
        require_holdout_rows(n_rows, target_fpr, self.min_tail_samples, name="The holdout")

        # The joint rejection rate falls as the level rises, so bisect for the lowest level
        # whose rate is at most target_fpr. Level 1 (every maximum) rejects no held-out row.
        low, high = 1.0 - target_fpr, 1.0
        if _joint_fpr(scores, low) <= target_fpr:
            high = low
        for _ in range(_BISECTION_STEPS):
            if high - low < 1e-12:
                break
            middle = (low + high) / 2
            if _joint_fpr(scores, middle) <= target_fpr:
                high = middle
            else:
                low = middle

        self.level = float(high)
        self.thresholds = _thresholds(scores, self.level)
        self.target_fpr = float(target_fpr)
        self.calibrated_fpr = _joint_fpr(scores, self.level)
        self.component_fpr = {name: float(np.mean(values > self.thresholds[name])) for name, values in scores.items()}
        self.n_holdout = int(n_rows)
        return self

    def _component_scores(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = sorted(set(self.detectors) - set(inputs))
        if missing:
            raise ConfigError(
                f"Inputs for detectors {missing} are missing; pass one input per detector name {sorted(self.detectors)}."
            )
        scores = {name: np.asarray(detector.score(inputs[name]), dtype=np.float64) for name, detector in self.detectors.items()}
        lengths = {name: s.shape[0] for name, s in scores.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"The detector inputs have different numbers of rows {lengths}; pass the same rows to each.")
        return scores

    def component_ratios(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Return, for each component, every row's score divided by the component's threshold.

        A zero threshold gives a ratio of 0 for a zero score and infinity otherwise.
        """
        if self.thresholds is None:
            raise RuntimeError("CombinedOOD is not calibrated. Call fit() or from_tensors() first.")
        ratios = {}
        for name, score in self._component_scores(inputs).items():
            threshold = self.thresholds[name]
            if threshold > 0:
                ratios[name] = score / threshold
            else:
                ratios[name] = np.where(score > 0, math.inf, 0.0)
        return ratios

    def score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Compute each row's largest component ratio. A row above `threshold` (1.0) is rejected."""
        return np.max(np.stack(list(self.component_ratios(inputs).values()), axis=1), axis=1)

    def accepts(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Return a boolean per row: True when every component accepts the row."""
        return self.score(inputs) <= self.threshold

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Return every component's tensors, prefixed ``<name>.``, for safetensors."""
        tensors = {}
        for name, detector in self.detectors.items():
            tensors.update({f"{name}.{key}": value for key, value in detector.to_tensors().items()})
        return tensors

    def metadata(self) -> dict[str, Any]:
        """Return the JSON part of the state: each component's kind, metadata and joint threshold."""
        if self.thresholds is None:
            raise RuntimeError("CombinedOOD is not calibrated, so there is no state to save. Call fit() first.")
        return {
            "kind": "combined",
            "components": {
                name: {"kind": _kind(detector), "threshold": self.thresholds[name], "metadata": detector.metadata()}
                for name, detector in self.detectors.items()
            },
            "level": self.level,
            "target_fpr": self.target_fpr,
            "calibrated_fpr": self.calibrated_fpr,
            "component_fpr": self.component_fpr,
            "n_holdout": self.n_holdout,
            "min_tail_samples": self.min_tail_samples,
        }

    def to_json(self) -> dict[str, Any]:
        """Return the whole state as plain JSON: the metadata and every tensor as a nested list.

        For states embedded in a JSON description. Python writes each float with the shortest
        text that reads back to the same value, so the round trip is exact.
        """
        tensors = {
            name: {"dtype": str(value.dtype).removeprefix("torch."), "values": value.tolist()}
            for name, value in self.to_tensors().items()
        }
        return {"kind": "combined", "metadata": self.metadata(), "tensors": tensors}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CombinedOOD:
        """Rebuild a calibrated check from `to_json()` output.

        Raises
        ------
        ValueError
            If the data is not a combined check's state, or a component rejects its state.
        """
        if data.get("kind") != "combined":
            raise ValueError(f"The state has kind {data.get('kind')!r}, not 'combined'; pass the output of CombinedOOD.to_json().")
        tensors = {
            name: torch.tensor(entry["values"], dtype=getattr(torch, entry["dtype"]))
            for name, entry in data["tensors"].items()
        }
        return cls.from_tensors(tensors, data["metadata"])

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> CombinedOOD:
        """Rebuild a calibrated check from `to_tensors()` and `metadata()` output.

        Raises
        ------
        ValueError
            If a component's kind is unknown, a threshold is not finite, or a component's own
            `from_tensors` rejects its state.
        """
        detectors = {}
        thresholds = {}
        for name, component in metadata["components"].items():
            kind = component["kind"]
            if kind not in DETECTOR_KINDS:
                raise ValueError(f"Component {name!r} has unknown kind {kind!r}; known kinds are {sorted(DETECTOR_KINDS)}.")
            prefix = f"{name}."
            own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
            detectors[name] = DETECTOR_KINDS[kind].from_tensors(own, component["metadata"])
            thresholds[name] = float(component["threshold"])
            if not math.isfinite(thresholds[name]):
                raise ValueError(f"Component {name!r} has threshold {thresholds[name]!r}; refit the combined check.")
        combined = cls(detectors, min_tail_samples=int(metadata.get("min_tail_samples", 10)))
        combined.thresholds = thresholds
        combined.level = metadata.get("level")
        combined.target_fpr = metadata.get("target_fpr")
        combined.calibrated_fpr = metadata.get("calibrated_fpr")
        combined.component_fpr = metadata.get("component_fpr")
        combined.n_holdout = metadata.get("n_holdout")
        return combined


def _kind(detector: object) -> str | None:
    return next((kind for kind, cls in DETECTOR_KINDS.items() if type(detector) is cls), None)


def _thresholds(scores: dict[str, np.ndarray], level: float) -> dict[str, float]:
    # "higher" picks an observed score, as in the single detectors' calibration.
    return {name: float(np.quantile(values, level, method="higher")) for name, values in scores.items()}


def _joint_fpr(scores: dict[str, np.ndarray], level: float) -> float:
    thresholds = _thresholds(scores, level)
    rejected = np.zeros(next(iter(scores.values())).shape[0], dtype=bool)
    for name, values in scores.items():
        rejected |= values > thresholds[name]
    return float(rejected.mean())


def fit_domain_check(
    feature_reference: MahalanobisOOD | None,
    train_inputs: Any,
    holdout_inputs: Any,
    holdout_features: Any,
    *,
    target_fpr: float,
    min_tail_samples: int = 10,
    seed: int = 0,
    autoencoder: Mapping[str, Any] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    train_labels: Any = None,
    holdout_labels: Any = None,
    components: Sequence[str] = IMAGE_CHECK,
    cross_fit_folds: int = 5,
) -> CombinedOOD:
    """Fit the chosen OOD scores of one image domain and calibrate them together on the holdout.

    The raw-input scores are fitted on the expert's normalised training inputs. Use the rows
    that `feature_reference` was fitted and calibrated on.

    Parameters
    ----------
    feature_reference
        The fitted Mahalanobis reference on the expert's features. Needed only when
        `components` names "features", and None otherwise.
    train_inputs, holdout_inputs
        Normalised inputs (what the expert reads) of the training and held-out rows.
    holdout_features
        The expert's features of the held-out rows, or None when `components` does not name
        "features".
    autoencoder
        Keyword arguments of `AutoencoderOOD`. By default one hidden layer of 64 units and a
        bottleneck of a quarter of the inputs, at most 16, and the inputs are used as given
        because the expert's normalisation already scaled them.
    image_shape
        (channels, height, width) of the inputs, needed by the gradient components.
    train_labels, holdout_labels
        Class of each training and held-out row. The gradient components fit models per
        class, or for all rows as one class when None. Cross-fitting needs both or neither.
    components
        Names from `CHECK_COMPONENTS`. Of the combinations that benchmarks/detection.py
        measures, the default, `IMAGE_CHECK`, separates the Split MNIST tasks best (per-row
        AUROC mean 0.988, worst pair 0.972) and keeps UCI digits against MNIST at 0.973. The
        deskewed score alone separates the Split MNIST tasks slightly better (0.989, worst pair
        0.977) but UCI digits from MNIST at 0.922 only, because the slant is part of what
        distinguishes those two domains.
    cross_fit_folds
        Number of folds for cross-fitting, used when every component is a gradient score. The
        training and held-out rows are pooled and split into folds, and models fitted on the
        other folds score each fold. These out-of-fold scores calibrate the check, and the
        final models are fitted on every row. Below 2, or with other components, the
        components are fitted on the training rows and calibrated on the held-out rows. The gradient scores
        do not depend on the expert, so its held-out rows can train them. On Split MNIST, with
        two k-means clusters per class, fitting on 800 rows in place of 600 raised the worst
        task pair's AUROC, pooled over 5 test folds, from 0.968 to 0.971 (benchmarks/detection.py).

    Raises
    ------
    ConfigError
        If a component name is unknown, a gradient component has no image_shape, "features"
        has no feature_reference or holdout_features, or cross-fitting gets labels for only
        the training or only the held-out rows.
    """
    unknown = sorted(set(components) - set(CHECK_COMPONENTS))
    if unknown or not components:
        raise ConfigError(f"components {list(components)!r} must be a non-empty list of names from {list(CHECK_COMPONENTS)}.")
    if image_shape is None and {GRADIENT, GRADIENT_DESKEWED} & set(components):
        raise ConfigError(f"components {list(components)!r} include gradient scores, which need image_shape; pass it.")
    if FEATURES in components and (feature_reference is None or holdout_features is None):
        raise ConfigError(
            f"components {list(components)!r} include 'features', which needs feature_reference and "
            "holdout_features; pass both or leave 'features' out."
        )
    if isinstance(cross_fit_folds, bool) or not isinstance(cross_fit_folds, int):
        raise ConfigError(f"cross_fit_folds must be an integer, got {cross_fit_folds!r}.")
    if cross_fit_folds >= 2 and set(components) <= {GRADIENT, GRADIENT_DESKEWED}:
        return _cross_fitted_gradient_check(
            components, train_inputs, holdout_inputs, train_labels, holdout_labels, image_shape,
            target_fpr=target_fpr, min_tail_samples=min_tail_samples, seed=seed, folds=cross_fit_folds,
        )
    train = np.asarray(train_inputs, dtype=np.float64)
    detectors: dict[str, OODScore] = {}
    for name in components:
        if name == FEATURES:
            detectors[name] = feature_reference
        elif name == AUTOENCODER:
            settings = {
                "hidden": (64,),
                "bottleneck": max(1, min(16, train.shape[1] // 4)),
                "scaling": "none",
                "seed": seed,
            } | dict(autoencoder or {})
            detectors[name] = AutoencoderOOD(**settings, min_tail_samples=min_tail_samples).fit(
                train, holdout_inputs, target_fpr=target_fpr
            )
        elif name == ROW_STATISTICS:
            detectors[name] = RowStatisticsOOD(min_tail_samples=min_tail_samples).fit(
                train, holdout_inputs, target_fpr=target_fpr
            )
        else:
            detectors[name] = GradientSubspaceOOD(
                image_shape, deskew=name == GRADIENT_DESKEWED, min_tail_samples=min_tail_samples
            ).fit(train, holdout_inputs, target_fpr=target_fpr, labels=train_labels)
    combined = CombinedOOD(detectors, min_tail_samples=min_tail_samples)
    return combined.fit(domain_check_inputs(holdout_features, holdout_inputs), target_fpr=target_fpr)


def _cross_fitted_gradient_check(
    components: Sequence[str],
    train_inputs: Any,
    holdout_inputs: Any,
    train_labels: Any,
    holdout_labels: Any,
    image_shape: tuple[int, int, int],
    *,
    target_fpr: float,
    min_tail_samples: int,
    seed: int,
    folds: int,
) -> CombinedOOD:
    """Fit gradient components on the training and held-out rows together, calibrated on out-of-fold scores."""
    if (train_labels is None) != (holdout_labels is None):
        present, missing = ("train_labels", "holdout_labels") if holdout_labels is None else ("holdout_labels", "train_labels")
        raise ConfigError(
            f"Cross-fitting got {present} but no {missing}; pass {missing} too, or neither, or cross_fit_folds=0 "
            "to fit on the training rows only."
        )
    train = _as_features(train_inputs, "train_inputs", n_features=int(np.prod(image_shape)))
    holdout = _as_features(holdout_inputs, "holdout_inputs", n_features=int(np.prod(image_shape)))
    rows = np.vstack([train, holdout])
    labels = None if train_labels is None else np.r_[np.asarray(train_labels).reshape(-1), np.asarray(holdout_labels).reshape(-1)]
    if labels is not None and labels.shape[0] != rows.shape[0]:
        raise ValueError(
            f"The labels have {labels.shape[0]} entries for {rows.shape[0]} training and held-out rows; pass one label per row."
        )
    require_holdout_rows(rows.shape[0], target_fpr, min_tail_samples, name="The training and held-out rows together")
    if rows.shape[0] < 2 * folds:
        raise ConfigError(f"{rows.shape[0]} rows are too few for {folds} folds; pass more rows or a smaller cross_fit_folds.")

    # Each fold gets every folds-th row of a seeded permutation, so the folds differ in size by at most one row.
    fold_of = np.empty(rows.shape[0], dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(rows.shape[0])] = np.arange(rows.shape[0]) % folds
    detectors: dict[str, OODScore] = {}
    out_of_fold: dict[str, np.ndarray] = {}
    for name in components:
        final = GradientSubspaceOOD(image_shape, deskew=name == GRADIENT_DESKEWED, min_tail_samples=min_tail_samples)
        # The lowest pixel of all rows is the background of every fold's models.
        final.background = float(rows.min())
        descriptors = final.descriptors(rows)
        out_of_fold[name] = np.empty(rows.shape[0])
        for fold in range(folds):
            held_out = fold_of == fold
            model = GradientSubspaceOOD(image_shape, deskew=name == GRADIENT_DESKEWED, min_tail_samples=min_tail_samples)
            model.background = final.background
            model.fit_descriptors(descriptors[~held_out], None if labels is None else labels[~held_out])
            out_of_fold[name][held_out] = model.score_descriptors(descriptors[held_out])
        final.fit_descriptors(descriptors, labels)
        detectors[name] = final.calibrate(out_of_fold[name], target_fpr)
    return CombinedOOD(detectors, min_tail_samples=min_tail_samples).fit_scores(out_of_fold, target_fpr=target_fpr)


def domain_check_inputs(features: Any, inputs: Any) -> dict[str, Any]:
    """Return the inputs of a `fit_domain_check` check: the expert's features and its normalised inputs."""
    return {name: features if name == FEATURES else inputs for name in CHECK_COMPONENTS}


def ood_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> MahalanobisOOD | CombinedOOD:
    """Rebuild a domain's OOD reference, combined or a single Mahalanobis model, from its saved state.

    The metadata of a `CombinedOOD` has ``"kind": "combined"``. Any other metadata is read as
    `MahalanobisOOD` state, the reference every expert had before combined checks existed.
    """
    if metadata.get("kind") == "combined":
        return CombinedOOD.from_tensors(tensors, metadata)
    return MahalanobisOOD.from_tensors(tensors, metadata)
