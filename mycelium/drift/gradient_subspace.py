"""Distance of an image's gradient histograms from the model of its nearest class: an OOD score.

Reconstruction errors and Mahalanobis distances on pixels favour simple images: a thin "1"
lies close to many digit models in pixel space, so a model of 2s and 3s scores many 1s as its
own. Histograms of oriented gradients (HOG) describe the strokes instead of the ink. Each class
of the domain, or each k-means cluster of a large class, gets its own principal subspace of
those histograms, as in SIMCA. A row's score is its Mahalanobis distance to the nearest model
under a shrunken covariance, with entries for gradient magnitude and holes, or its distance to
the nearest subspace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from threadpoolctl import threadpool_limits

from mycelium.drift.calibration import require_holdout_rows, threshold_at_fpr
from mycelium.drift.ood import _as_features
from mycelium.errors import ConfigError

# Added to each block's squared norm before dividing, so a blank block stays zero.
_BLOCK_EPSILON = 1e-6
# Added to the mean gradient magnitude before the logarithm, so a blank image gets a finite value.
_ENERGY_EPSILON = 1e-6
SUBSPACE = "subspace"
MAHALANOBIS = "mahalanobis"
# A pixel is ink when it is above this fraction of the image's brightest pixel, counted from the
# background. Holes are the regions of non-ink pixels that do not touch the border.
_INK_LEVEL = 0.4
# Connects 4-neighbours within each image of an (n, height, width) stack and nothing across images.
_PLANAR_4_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_PLANAR_4_CONNECTED[1] = ndimage.generate_binary_structure(2, 1)


class GradientSubspaceOOD:
    """Distance of an image's HOG descriptor to the model of its nearest class.

    The descriptor starts from gradients by central differences. Each pixel's gradient
    magnitude is split between the two nearest of ``bins`` orientation bins over 360 degrees
    and averaged over each cell of a ``cells`` x ``cells`` grid. Every block of 2 x 2
    neighbouring cells is then scaled to unit length. With ``deskew=True`` each image is first
    sheared so that its ink has no slant, a common preprocessing step for handwritten digits.
    Per class, or per k-means cluster of a class with enough rows, the descriptors of the
    training rows give a mean, a covariance S, its mean variance per entry mu and its first
    ``n_components`` principal directions. As in
    `MahalanobisOOD`, the threshold is the (1 - target_fpr) quantile of held-out scores.

    ``distance="subspace"`` scores a row by the squared norm of its centred descriptor minus
    its projection on the model's principal subspace, for the nearest model.

    ``distance="mahalanobis"`` adds four entries to the descriptor and scores a row by its
    squared Mahalanobis distance under the shrunken covariance
    ``(1 - shrinkage) * S + shrinkage * mu * I``, for the nearest model. The model keeps the
    first ``n_components`` directions with their shrunken variances, and every other
    direction gets the floor ``shrinkage * mu``. Block normalisation discards how much
    gradient the image has, so the first added entry is the logarithm of the mean gradient
    magnitude. A blank image has no gradients, and this entry lies far below any digit's. The
    other three describe the holes of the image, the regions of background (below 40% of the
    brightest pixel) that the ink encloses: their number, the mean height of their pixels as a
    fraction of the ink's height from its top row, and their area over the ink's area (both 0
    without holes). The holes are measured before deskewing. Histograms of 7-pixel cells do
    not see whether a stroke closes a loop, which is much of what distinguishes an 8 from a 5
    or a 9 from a 4. On 28x28 Split MNIST digits, this distance raised the worst per-row AUROC
    between tasks from 0.940 to 0.971 (benchmarks/detection.py).

    A positive affine scaling of the pixels, such as the expert's normalisation, changes the
    histogram entries only through the small constant added to each block's squared norm,
    because each block is scaled to unit length. The log gradient magnitude moves by the
    logarithm of the scale factor, and the hole entries do not change. The expert's
    normalisation is fixed per domain, so this shift does not change a domain's scores.

    Parameters
    ----------
    image_shape
        (channels, height, width) of the flat rows. Only one channel is supported.
    cells
        Cells per side of the grid. Each side of the image must have at least this many
        pixels. On 28x28 Split MNIST digits, 4 cells separated the tasks better than 3, 5, 7
        or 10 (benchmarks/detection.py, Findings).
    bins
        Orientation bins over 360 degrees.
    n_components
        Principal directions per class, by default 50 for "mahalanobis" and 20 for
        "subspace". A class with fewer training rows keeps one direction less than its row
        count.
    distance
        "mahalanobis" (the default) or "subspace".
    shrinkage
        Weight of the mean variance in the shrunken covariance of "mahalanobis", in (0, 1].
    deskew
        Remove each image's slant before computing the descriptor.
    clusters_per_class
        Most k-means clusters per class, each with its own model. A class written in several
        ways, such as 4s with an open or a closed top, fits one Gaussian poorly.
    min_cluster_rows
        Training rows per cluster: a class of n rows gets ``min(clusters_per_class, n //
        min_cluster_rows)`` clusters, so a class of fewer than ``2 * min_cluster_rows`` rows
        keeps one model.
    min_tail_samples
        Minimum expected number of held-out rows above the threshold.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> def bars(n, vertical):
    ...     images = rng.uniform(0, 0.1, size=(n, 8, 8))
    ...     columns = rng.integers(2, 6, size=n)
    ...     for image, column in zip(images, columns):
    ...         if vertical:
    ...             image[1:7, column] = 1.0
    ...         else:
    ...             image[column, 1:7] = 1.0
    ...     return images.reshape(n, 64)
    >>> ood = GradientSubspaceOOD((1, 8, 8), n_components=3).fit(bars(300, True), bars(200, True), target_fpr=0.05)
    >>> float(np.mean(ood.accepts(bars(100, True)))) > 0.85, float(np.mean(ood.accepts(bars(100, False))))
    (True, 0.0)
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        cells: int = 4,
        bins: int = 9,
        n_components: int | None = None,
        distance: str = MAHALANOBIS,
        shrinkage: float = 0.5,
        deskew: bool = False,
        clusters_per_class: int = 2,
        min_cluster_rows: int = 150,
        min_tail_samples: int = 10,
    ) -> None:
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"image_shape must be (channels, height, width), got {image_shape!r}.")
        if shape[0] != 1:
            raise ConfigError(
                f"image_shape {shape} has {shape[0]} channels, but the gradient histograms support one; "
                "convert the images to grey levels or leave this score out."
            )
        if distance not in (SUBSPACE, MAHALANOBIS):
            raise ConfigError(f"distance must be {MAHALANOBIS!r} or {SUBSPACE!r}, got {distance!r}.")
        if n_components is None:
            n_components = 50 if distance == MAHALANOBIS else 20
        for name, value, minimum in [("cells", cells, 2), ("bins", bins, 2), ("n_components", n_components, 1),
                                     ("clusters_per_class", clusters_per_class, 1), ("min_cluster_rows", min_cluster_rows, 2),
                                     ("min_tail_samples", min_tail_samples, 1)]:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        if min(shape[1:]) < cells:
            raise ConfigError(f"cells={cells} is larger than the image side {min(shape[1:])}; pass a smaller cells.")
        if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 < shrinkage <= 1:
            raise ConfigError(f"shrinkage must be a number in (0, 1], got {shrinkage!r}.")
        if not isinstance(deskew, bool):
            raise ConfigError(f"deskew must be True or False, got {deskew!r}.")
        self.image_shape = shape
        self.cells = int(cells)
        self.bins = int(bins)
        self.n_components = int(n_components)
        self.distance = distance
        self.shrinkage = float(shrinkage)
        self.deskew = deskew
        self.clusters_per_class = int(clusters_per_class)
        self.min_cluster_rows = int(min_cluster_rows)
        self.min_tail_samples = int(min_tail_samples)
        self.means: np.ndarray | None = None
        self.bases: np.ndarray | None = None
        self.variances: np.ndarray | None = None
        self.noise: np.ndarray | None = None
        self.background: float | None = None
        self.n_classes: int | None = None
        self.threshold: float | None = None
        self.target_fpr: float | None = None
        self.calibrated_fpr: float | None = None
        self.n_train: int | None = None
        self.n_holdout: int | None = None

    @property
    def n_features(self) -> int:
        """Number of pixels of one row."""
        return self.image_shape[0] * self.image_shape[1] * self.image_shape[2]

    @property
    def n_models(self) -> int | None:
        """Number of models (a class has one per cluster), or None before `fit`."""
        return None if self.means is None else int(self.means.shape[0])

    def fit(self, train_inputs: Any, holdout_inputs: Any, *, target_fpr: float, labels: Any = None) -> GradientSubspaceOOD:
        """Fit the models of each class on training rows and calibrate the threshold on held-out rows.

        Parameters
        ----------
        train_inputs, holdout_inputs
            Flat images, shape (n_rows, channels * height * width), numpy or torch.
        target_fpr
            Fraction of in-domain rows that may be rejected, in (0, 1).
        labels
            Class of each training row. None fits the models of one class of all rows.

        Raises
        ------
        ConfigError
            If target_fpr is outside (0, 1) or the holdout is too small for it.
        ValueError
            If the inputs have the wrong width or contain NaN or infinity, or the labels do
            not match the training rows.
        """
        if not 0 < target_fpr < 1:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}.")
        train = _as_features(train_inputs, "train_inputs", n_features=self.n_features)
        holdout = _as_features(holdout_inputs, "holdout_inputs", n_features=self.n_features)
        require_holdout_rows(holdout.shape[0], target_fpr, self.min_tail_samples, name="holdout_inputs")
        # The lowest training pixel is the background, the zero of the ink weights used to deskew.
        self.background = float(train.min())
        self.fit_descriptors(self.descriptors(train), labels)
        return self.calibrate(self.score(holdout), target_fpr)

    def fit_descriptors(self, descriptors: np.ndarray, labels: Any = None) -> GradientSubspaceOOD:
        """Fit the models of each class on the `descriptors` of training rows, without a threshold.

        Set `background` first: the descriptors must come from `descriptors()` with it. A class
        of at least ``2 * min_cluster_rows`` rows is split by k-means into
        ``min(clusters_per_class, rows // min_cluster_rows)`` clusters, and each cluster gets
        its own model. A row's score is its distance to the nearest model.

        Raises
        ------
        ValueError
            If the labels do not match the rows.
        """
        descriptors = np.asarray(descriptors, dtype=np.float64)
        classes = np.zeros(descriptors.shape[0], dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
        if classes.shape[0] != descriptors.shape[0]:
            raise ValueError(
                f"labels has {classes.shape[0]} entries for {descriptors.shape[0]} training rows; pass one label per row."
            )
        groups = [descriptors[classes == label] for label in np.unique(classes)]
        self.n_classes = len(groups)
        groups = [cluster for rows in groups for cluster in self._clusters(rows)]
        width = descriptors.shape[1]
        means, bases, eigenvalues, mean_variances = [], [], [], []
        with _one_thread():
            for group in groups:
                rows = torch.as_tensor(group)
                mean = rows.mean(dim=0)
                _, singular, directions = torch.linalg.svd(rows - mean, full_matrices=False)
                variance = singular**2 / max(rows.shape[0] - 1, 1)
                basis = torch.zeros(self.n_components, width, dtype=torch.float64)
                kept_variance = torch.zeros(self.n_components, dtype=torch.float64)
                n_kept = min(self.n_components, rows.shape[0] - 1)
                basis[:n_kept] = directions[:n_kept]
                kept_variance[:n_kept] = variance[:n_kept]
                means.append(mean)
                bases.append(basis)
                eigenvalues.append(kept_variance)
                mean_variances.append(float(variance.sum()) / width)
        # A model of one row has no variance of its own: it takes the mean over the other
        # models, or 1 when no model varies, which makes its score the squared distance.
        varying = [value for value in mean_variances if value > 0]
        fallback = float(np.mean(varying)) if varying else 1.0
        mean_variances = [value if value > 0 else fallback for value in mean_variances]
        self.means = torch.stack(means).numpy()
        self.bases = torch.stack(bases).numpy()
        self.noise = self.shrinkage * np.asarray(mean_variances)
        self.variances = (1 - self.shrinkage) * torch.stack(eigenvalues).numpy() + self.noise[:, None]
        self.n_train = int(descriptors.shape[0])
        return self

    def _clusters(self, rows: np.ndarray) -> list[np.ndarray]:
        """Split one class's descriptors into k-means clusters, or return them whole when they are few."""
        n_clusters = min(self.clusters_per_class, rows.shape[0] // self.min_cluster_rows)
        if n_clusters < 2:
            return [rows]
        from sklearn.cluster import KMeans

        # On 2 shared cores, KMeans with its default OpenMP threads took 30 times longer than
        # with one thread (0.2 s against 0.007 s for 400 x 328 descriptors, scikit-learn 1.9.1).
        with threadpool_limits(limits=1, user_api="openmp"):
            assignments = KMeans(n_clusters=n_clusters, n_init=4, random_state=0).fit_predict(rows)
        return [rows[assignments == cluster] for cluster in range(n_clusters) if np.any(assignments == cluster)]

    def calibrate(self, holdout_scores: np.ndarray, target_fpr: float) -> GradientSubspaceOOD:
        """Set the threshold to the (1 - target_fpr) quantile of in-domain scores of rows the models did not see."""
        if not 0 < target_fpr < 1:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}.")
        scores = np.asarray(holdout_scores, dtype=np.float64).reshape(-1)
        require_holdout_rows(scores.shape[0], target_fpr, self.min_tail_samples, name="The holdout scores")
        self.threshold, self.calibrated_fpr = threshold_at_fpr(scores, target_fpr)
        self.target_fpr = float(target_fpr)
        self.n_holdout = int(scores.shape[0])
        return self

    @property
    def width(self) -> int:
        """Length of one descriptor: the histograms of every block, then the 4 shape entries for "mahalanobis"."""
        return self.bins * 4 * (self.cells - 1) ** 2 + (4 if self.distance == MAHALANOBIS else 0)

    def descriptors(self, inputs: Any) -> np.ndarray:
        """Return the descriptor of each row, shape (n_rows, `width`)."""
        rows = _as_features(inputs, "inputs", n_features=self.n_features)
        images = torch.as_tensor(rows, dtype=torch.float64).reshape(-1, *self.image_shape)
        background = 0.0 if self.background is None else self.background
        parts = []
        with _one_thread():
            if self.distance == MAHALANOBIS:
                holes = _holes(images, background)
            if self.deskew:
                images = _deskew(images, background)
            parts.append(_gradient_histograms(images, self.cells, self.bins).numpy())
            if self.distance == MAHALANOBIS:
                parts += [_log_gradient_magnitude(images).numpy()[:, None], holes]
        return np.concatenate(parts, axis=1)

    def score(self, inputs: Any) -> np.ndarray:
        """Compute each row's distance to the nearest model. Higher means farther.

        The squared distance to the model's subspace for "subspace", the squared Mahalanobis
        distance under the shrunken covariance for "mahalanobis".

        Raises
        ------
        RuntimeError
            If the detector is not fitted.
        ValueError
            If the inputs have the wrong width or contain NaN or infinity.
        """
        self._require_fitted()
        return self.score_descriptors(self.descriptors(inputs))

    def score_descriptors(self, descriptors: np.ndarray) -> np.ndarray:
        """Compute the distance to the nearest model of rows given by their `descriptors()`."""
        self._require_fitted()
        descriptors = torch.as_tensor(np.asarray(descriptors, dtype=np.float64))
        distances = []
        with _one_thread():
            for index, (mean, basis) in enumerate(zip(torch.as_tensor(self.means), torch.as_tensor(self.bases))):
                centered = descriptors - mean
                projections = centered @ basis.T
                if self.distance == SUBSPACE:
                    distances.append(torch.sum((centered - projections @ basis) ** 2, dim=1))
                    continue
                residual = torch.sum(centered**2, dim=1) - torch.sum(projections**2, dim=1)
                variances = torch.as_tensor(self.variances[index])
                # Rounding can leave a residual slightly below zero for a row on the subspace.
                distances.append(projections**2 @ (1 / variances) + torch.clamp(residual, min=0.0) / float(self.noise[index]))
            return torch.stack(distances, dim=1).min(dim=1).values.numpy()

    def _require_fitted(self) -> None:
        if self.means is None or self.bases is None or (self.distance == MAHALANOBIS and self.variances is None):
            raise RuntimeError("GradientSubspaceOOD is not fitted. Call fit() or from_tensors() first.")

    def accepts(self, inputs: Any) -> np.ndarray:
        """Return a boolean per row: True when the row's score is at most the threshold."""
        return self.score(inputs) <= self.threshold

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Return the class means, principal directions and, for "mahalanobis", variances as float64 tensors."""
        if self.means is None or self.bases is None:
            raise RuntimeError("GradientSubspaceOOD is not fitted, so there is no state to save. Call fit() first.")
        return {name: torch.from_numpy(getattr(self, name).copy()) for name in _TENSORS[self.distance]}

    def metadata(self) -> dict[str, Any]:
        """Return the JSON part of the state: descriptor settings, threshold, FPRs and sizes."""
        if self.threshold is None:
            raise RuntimeError("GradientSubspaceOOD is not fitted, so there is no state to save. Call fit() first.")
        return {
            "image_shape": list(self.image_shape),
            "cells": self.cells,
            "bins": self.bins,
            "n_components": self.n_components,
            "distance": self.distance,
            "shrinkage": self.shrinkage,
            "deskew": self.deskew,
            "clusters_per_class": self.clusters_per_class,
            "min_cluster_rows": self.min_cluster_rows,
            "background": self.background,
            "n_classes": self.n_classes,
            "n_models": self.n_models,
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "calibrated_fpr": self.calibrated_fpr,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "min_tail_samples": self.min_tail_samples,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> GradientSubspaceOOD:
        """Rebuild a fitted detector from `to_tensors()` and `metadata()` output.

        Raises
        ------
        ValueError
            If a tensor is missing, its shape does not match the metadata, or a value is not finite.
        """
        # States saved before the "mahalanobis" distance existed have no "distance" entry.
        distance = metadata.get("distance", SUBSPACE)
        missing = sorted(set(_TENSORS.get(distance, ())) - set(tensors))
        if missing:
            raise ValueError(f"The tensors lack {missing}; pass the output of GradientSubspaceOOD.to_tensors().")
        detector = cls(
            tuple(metadata["image_shape"]),
            cells=int(metadata["cells"]),
            bins=int(metadata["bins"]),
            n_components=int(metadata["n_components"]),
            distance=distance,
            shrinkage=float(metadata.get("shrinkage", 0.5)),
            deskew=bool(metadata["deskew"]),
            # States saved before clustering existed have one model per class.
            clusters_per_class=int(metadata.get("clusters_per_class", 1)),
            min_cluster_rows=int(metadata.get("min_cluster_rows", 150)),
            min_tail_samples=int(metadata.get("min_tail_samples", 10)),
        )
        state = {name: tensors[name].detach().cpu().to(torch.float64).numpy() for name in _TENSORS[distance]}
        n_classes, n_components, width = int(metadata["n_classes"]), detector.n_components, detector.width
        n_models = int(metadata.get("n_models", n_classes))
        expected = {
            "means": (n_models, width),
            "bases": (n_models, n_components, width),
            "variances": (n_models, n_components),
            "noise": (n_models,),
        }
        expected = {name: shape for name, shape in expected.items() if name in state}
        shapes = {name: tuple(value.shape) for name, value in state.items()}
        if shapes != expected:
            raise ValueError(
                f"Tensor shapes {shapes} do not match {n_models} models of {n_components} directions in "
                f"{width} dimensions from the metadata ({expected}); the state files belong to different fits."
            )
        if not all(np.all(np.isfinite(value)) for value in state.values()):
            raise ValueError(f"A tensor of {list(state)} contains NaN or infinity; refit the detector.")
        if distance == MAHALANOBIS and (np.any(state["variances"] <= 0) or np.any(state["noise"] <= 0)):
            raise ValueError("The variances or noise tensor has a value <= 0; refit the detector.")
        threshold = float(metadata["threshold"])
        if not math.isfinite(threshold):
            raise ValueError(f"The metadata threshold {threshold!r} is not finite; refit the detector.")
        detector.means, detector.bases = state["means"], state["bases"]
        detector.variances, detector.noise = state.get("variances"), state.get("noise")
        detector.background = float(metadata["background"])
        detector.n_classes = n_classes
        detector.threshold = threshold
        detector.target_fpr = metadata.get("target_fpr")
        detector.calibrated_fpr = metadata.get("calibrated_fpr")
        detector.n_train = metadata.get("n_train")
        detector.n_holdout = metadata.get("n_holdout")
        return detector


_TENSORS = {SUBSPACE: ("means", "bases"), MAHALANOBIS: ("means", "bases", "variances", "noise")}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread, and restore the previous thread count afterwards.

    The matrices here are small, and on 2 shared cores a multi-threaded SVD of 300 x 324
    descriptors took 2.7 s against 0.06 s on one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _gradient_histograms(images: torch.Tensor, cells: int, bins: int) -> torch.Tensor:
    """Compute HOG descriptors of (n, 1, height, width) images, blocks of 2 x 2 cells at unit length."""
    histograms = _pixel_histograms(images, bins)
    grid = F.adaptive_avg_pool2d(histograms, cells)
    blocks = []
    for row in range(cells - 1):
        for column in range(cells - 1):
            block = grid[:, :, row : row + 2, column : column + 2].reshape(images.shape[0], -1)
            blocks.append(block / torch.sqrt(torch.sum(block**2, dim=1, keepdim=True) + _BLOCK_EPSILON))
    return torch.cat(blocks, dim=1)


def _pixel_histograms(images: torch.Tensor, bins: int) -> torch.Tensor:
    """Return each pixel's gradient magnitude split over its orientation bins, shape (n, bins, height, width)."""
    gradient_x, gradient_y = _gradients(images)
    magnitude = torch.sqrt(gradient_x**2 + gradient_y**2)
    # Orientation over 360 degrees in units of bins; each pixel votes for its two nearest bins.
    position = torch.remainder(torch.atan2(gradient_y, gradient_x), 2 * math.pi) * (bins / (2 * math.pi))
    lower = torch.floor(position)
    upper_weight = position - lower
    lower_bin = lower.long() % bins
    histograms = torch.zeros(images.shape[0], bins, *images.shape[2:], dtype=images.dtype)
    histograms.scatter_add_(1, lower_bin, magnitude * (1 - upper_weight))
    histograms.scatter_add_(1, (lower_bin + 1) % bins, magnitude * upper_weight)
    return histograms


def _gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the horizontal and vertical central differences of (n, 1, height, width) images."""
    kernel = torch.tensor([-1.0, 0.0, 1.0], dtype=images.dtype)
    gradient_x = F.conv2d(F.pad(images, (1, 1, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 3))
    gradient_y = F.conv2d(F.pad(images, (0, 0, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 1))
    return gradient_x, gradient_y


def _log_gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Return the logarithm of each image's mean gradient magnitude."""
    gradient_x, gradient_y = _gradients(images)
    return torch.log(torch.sqrt(gradient_x**2 + gradient_y**2).mean(dim=(1, 2, 3)) + _ENERGY_EPSILON)


def _holes(images: torch.Tensor, background: float) -> np.ndarray:
    """Describe the holes of each (n, 1, height, width) image: count, mean height and area.

    Returns shape (n, 3): the number of background regions that the ink encloses, the mean row
    of their pixels as a fraction of the ink's height from its top row, and their pixel count
    over the ink's pixel count. Background regions are 4-connected, so ink that touches only at
    a corner still closes a loop. An image without holes, blank ones included, gets zeros.
    """
    ink = np.clip(images[:, 0].numpy() - background, 0.0, None)
    n_images, height, width = ink.shape
    features = np.zeros((n_images, 3))
    if n_images == 0:
        return features
    # A blank image (brightest pixel 0) has no ink pixel, so it gets one region and no holes.
    is_ink = ink > _INK_LEVEL * ink.max(axis=(1, 2), keepdims=True)
    # A border of background joins every region that touches the edge into one. All images are
    # labelled in one call: the structure connects 4-neighbours within an image and nothing
    # along the stack axis. Labels follow the scan order, so each image's labels form one run
    # that starts with its border region at pixel (0, 0).
    background_mask = np.pad(~is_ink, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    regions, _ = ndimage.label(background_mask, structure=_PLANAR_4_CONNECTED)
    border = regions[:, 0, 0]
    n_holes = regions.reshape(n_images, -1).max(axis=1) - border
    is_hole = regions[:, 1:-1, 1:-1] > border[:, None, None]

    has_holes = n_holes > 0
    hole_pixels = is_hole.sum(axis=(1, 2))
    hole_row_sums = (is_hole.sum(axis=2) * np.arange(height)).sum(axis=1)
    ink_rows = is_ink.any(axis=2)
    top = ink_rows.argmax(axis=1)
    bottom = height - 1 - ink_rows[:, ::-1].argmax(axis=1)
    ink_pixels = is_ink.sum(axis=(1, 2))
    # Only images with holes are divided, and each of them has ink rows and ink pixels.
    mean_hole_row = hole_row_sums[has_holes] / hole_pixels[has_holes]
    features[has_holes, 0] = n_holes[has_holes]
    features[has_holes, 1] = (mean_hole_row - top[has_holes]) / (bottom[has_holes] + 1 - top[has_holes])
    features[has_holes, 2] = hole_pixels[has_holes] / ink_pixels[has_holes]
    return features


def _deskew(images: torch.Tensor, background: float) -> torch.Tensor:
    """Shear each image horizontally so that the covariance of its ink's row and column is zero."""
    ink = torch.clamp(images[:, 0] - background, min=0.0)
    height, width = ink.shape[1:]
    rows = torch.arange(height, dtype=images.dtype).view(1, -1, 1)
    columns = torch.arange(width, dtype=images.dtype).view(1, 1, -1)
    total = ink.sum(dim=(1, 2)).clamp(min=1e-12)
    row_mean = (ink * rows).sum(dim=(1, 2)) / total
    column_mean = (ink * columns).sum(dim=(1, 2)) / total
    row_deviation = rows - row_mean.view(-1, 1, 1)
    row_variance = (ink * row_deviation**2).sum(dim=(1, 2)) / total
    covariance = (ink * row_deviation * (columns - column_mean.view(-1, 1, 1))).sum(dim=(1, 2)) / total
    # Pixels per row of slant. A blank image has no ink and keeps a slant of 0.
    slant = torch.where(row_variance > 1e-12, covariance / row_variance.clamp(min=1e-12), torch.zeros_like(covariance))

    # affine_grid maps output to input coordinates in [-1, 1]: x_in = x_out + slant' * y_out,
    # where slant' converts pixels per row to the normalised units of each axis.
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 1] = slant * (height / width)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros") + background
