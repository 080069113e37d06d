"""Real data sets loaded offline from installed packages, as tables of float64 features
and an int64 ``label`` column, ready for the prepare step."""

from mycelium.data.sources import (
    DIGIT_BLOCK_RANGE,
    DIGIT_COLUMNS,
    LABEL_COLUMN,
    PENGUIN_FEATURES,
    PENGUIN_SPECIES,
    SEGMENT_CLASSES,
    SOURCES,
    feature_columns,
    load_mnist_resampled,
    load_penguins,
    load_rainfall,
    load_segments,
    load_source,
    load_uci_digits,
    resample_digit_images,
)

__all__ = [
    "DIGIT_BLOCK_RANGE",
    "DIGIT_COLUMNS",
    "LABEL_COLUMN",
    "PENGUIN_FEATURES",
    "PENGUIN_SPECIES",
    "SEGMENT_CLASSES",
    "SOURCES",
    "feature_columns",
    "load_mnist_resampled",
    "load_penguins",
    "load_rainfall",
    "load_segments",
    "load_source",
    "load_uci_digits",
    "resample_digit_images",
]
