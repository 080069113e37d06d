"""Tests of the offline data loaders against the real packaged data sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mycelium.data import (
    DIGIT_COLUMNS,
    LABEL_COLUMN,
    PENGUIN_FEATURES,
    PENGUIN_SPECIES,
    SEGMENT_CLASSES,
    SOURCES,
    feature_columns,
    load_source,
    resample_digit_images,
)
from mycelium.errors import ConfigError

# name: (rows, feature count, class count)
EXPECTED_SHAPES = {
    "uci_digits": (1797, 64, 10),
    "mnist_digits": (5000, 64, 10),
    "mnist_pixels": (5000, 784, 10),
    "rainfall": (18159, 8, 2),
    "segments": (2310, 18, 7),
    "penguins": (344, 4, 3),
}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {name: load_source(name) for name in SOURCES}


def test_registry_lists_every_source():
    assert sorted(SOURCES) == sorted(EXPECTED_SHAPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_source_shape_and_dtypes(frames, name):
    frame = frames[name]
    rows, feature_count, class_count = EXPECTED_SHAPES[name]
    features = feature_columns(frame)

    assert frame.shape == (rows, feature_count + 1)
    assert frame.columns[-1] == LABEL_COLUMN
    assert len(features) == feature_count
    assert all(frame[column].dtype == np.float64 for column in features)
    assert frame[LABEL_COLUMN].dtype == np.int64
    assert sorted(frame[LABEL_COLUMN].unique()) == list(range(class_count))
    assert isinstance(frame.index, pd.RangeIndex)


@pytest.mark.parametrize("name", ["uci_digits", "mnist_digits", "mnist_pixels", "rainfall", "segments"])
def test_source_has_no_missing_values(frames, name):
    assert int(frames[name].isna().sum().sum()) == 0


@pytest.mark.parametrize("name", ["uci_digits", "mnist_digits"])
def test_digit_blocks_are_counts(frames, name):
    pixels = frames[name][list(DIGIT_COLUMNS)].to_numpy()

    assert list(frames[name].columns[:-1]) == list(DIGIT_COLUMNS)
    assert pixels.min() == 0
    assert pixels.max() == 16
    assert np.array_equal(pixels, np.round(pixels))


def test_mnist_pixels_are_grey_levels(frames):
    pixels = frames["mnist_pixels"].drop(columns=[LABEL_COLUMN]).to_numpy()

    assert pixels.min() == 0
    assert pixels.max() == 255
    assert np.array_equal(frames["mnist_pixels"][LABEL_COLUMN], frames["mnist_digits"][LABEL_COLUMN])


def test_mnist_digits_are_not_blank(frames):
    pixels = frames["mnist_digits"][list(DIGIT_COLUMNS)].to_numpy()

    assert (pixels.sum(axis=1) > 0).all()


def test_mnist_rows_sorted_by_digit(frames):
    labels = frames["mnist_digits"][LABEL_COLUMN].to_numpy()

    assert np.array_equal(labels, np.repeat(np.arange(10), 500))


def test_resampled_rectangle_known_blocks():
    # A 20x10 rectangle scales by 1.6 to 32x16 and is centred: canvas columns 8-23 are
    # ink, so block columns 2-5 are full (16) and the rest empty.
    image = np.zeros((1, 28, 28))
    image[0, 4:24, 9:19] = 255.0

    blocks = resample_digit_images(image).reshape(8, 8)

    expected = np.tile([0, 0, 16, 16, 16, 16, 0, 0], (8, 1))
    assert np.array_equal(blocks, expected)


def test_resampling_ignores_position_and_size():
    # Scales 2.0 and 1.6 both keep the bilinear corner weights above the 0.5 threshold.
    small = np.zeros((1, 28, 28))
    small[0, 2:18, 3:11] = 100.0
    large = np.zeros((1, 28, 28))
    large[0, 6:26, 12:22] = 200.0

    assert np.array_equal(resample_digit_images(small), resample_digit_images(large))


def test_resampling_wide_rectangle_centres_rows():
    # A 5x20 rectangle scales by 1.6 to 8x32: canvas rows 12-19, block rows 3-4.
    image = np.zeros((1, 28, 28))
    image[0, 10:15, 4:24] = 255.0

    blocks = resample_digit_images(image).reshape(8, 8)

    expected = np.zeros((8, 8))
    expected[3:5, :] = 16
    assert np.array_equal(blocks, expected)


def test_resampling_blank_image_gives_zeros():
    blocks = resample_digit_images(np.zeros((2, 28, 28)))

    assert blocks.shape == (2, 64)
    assert not blocks.any()


def test_resampling_rejects_flat_rows():
    with pytest.raises(ConfigError, match=r"Reshape"):
        resample_digit_images(np.zeros((3, 784)))


def test_resampling_rejects_bad_threshold():
    with pytest.raises(ConfigError, match="threshold"):
        resample_digit_images(np.zeros((1, 28, 28)), threshold=0.0)


def test_rainfall_keeps_feature_names(frames):
    assert feature_columns(frames["rainfall"]) == [
        "temperature",
        "dew_point",
        "sea_level_pressure",
        "visibility",
        "average_wind_speed",
        "max_sustained_wind_speed",
        "minimum_temperature",
        "maximum_temperature",
    ]


def test_segments_names_are_snake_case(frames):
    features = feature_columns(frames["segments"])

    assert features[0] == "region_centroid_col"
    assert "vegde_sd" in features
    assert all(name.isidentifier() for name in features)


def test_segments_classes_balanced(frames):
    counts = frames["segments"][LABEL_COLUMN].value_counts()

    assert len(SEGMENT_CLASSES) == 7
    assert (counts == 330).all()


def test_penguins_keep_missing_rows(frames):
    penguins = frames["penguins"]
    missing = penguins[list(PENGUIN_FEATURES)].isna()

    assert feature_columns(penguins) == list(PENGUIN_FEATURES)
    assert list(np.flatnonzero(missing.any(axis=1))) == [3, 271]
    assert missing.iloc[[3, 271]].all(axis=None)
    assert penguins[LABEL_COLUMN].notna().all()


def test_penguins_species_coded_sorted(frames):
    penguins = frames["penguins"]

    assert PENGUIN_SPECIES == ("Adelie", "Chinstrap", "Gentoo")
    assert penguins[LABEL_COLUMN].iloc[0] == 0  # The package lists Adelie first.
    assert penguins[LABEL_COLUMN].value_counts().to_dict() == {0: 152, 1: 68, 2: 124}


def test_unknown_source_names_valid_ones():
    with pytest.raises(ConfigError, match=r"'wine'.*penguins.*uci_digits"):
        load_source("wine")


def test_feature_columns_excludes_label():
    frame = pd.DataFrame({"a": [1.0], LABEL_COLUMN: [0], "b": [2.0]})

    assert feature_columns(frame) == ["a", "b"]
