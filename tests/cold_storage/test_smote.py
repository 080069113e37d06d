"""SMOTE settings and oversampling with real imbalanced-learn, and the balanced mini-buffer."""

import json

import imblearn
import numpy as np
import pandas as pd
import pytest

from mycelium.cold_storage.smote import (
    SINGLE_CLASS_REASON,
    balanced_buffer,
    oversample,
    smote_settings,
)
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError


@pytest.fixture
def samples() -> tuple[np.ndarray, np.ndarray]:
    # Classes of 1, 3, 6 and 12 samples, each around its own centre.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["one", "three", "six", "twelve"]), [1, 3, 6, 12])
    centres = {"one": 0.0, "three": 10.0, "six": 20.0, "twelve": 30.0}
    features = np.array([[centres[label], -centres[label]] for label in labels]) + rng.normal(size=(22, 2))
    return features, labels


def _is_on_segment(point, start, end) -> bool:
    direction = end - start
    t = float(np.dot(point - start, direction) / np.dot(direction, direction))
    return 0.0 <= t <= 1.0 and np.allclose(start + t * direction, point)


def test_settings_record_effective_k_per_class(samples):
    _, labels = samples

    settings = smote_settings(labels, k_neighbors=5, seed=7)

    by_label = {entry["label"]: entry for entry in settings["classes"]}
    assert by_label["one"] == {"label": "one", "count": 1, "k_neighbors": 0, "random_oversample": True}
    assert by_label["three"]["k_neighbors"] == 2
    assert by_label["six"]["k_neighbors"] == 5
    assert by_label["twelve"]["k_neighbors"] == 5
    assert settings["random_oversample_labels"] == ["one"]
    assert settings["single_class"] is False
    assert settings["seed"] == 7
    assert settings["imbalanced_learn_version"] == imblearn.__version__


def test_settings_are_json_serialisable_with_numpy_labels():
    settings = smote_settings(np.array([3, 3, 5], dtype=np.int64))

    decoded = json.loads(json.dumps(settings))

    assert decoded["classes"][0]["label"] == 3
    assert decoded == settings


def test_settings_mark_single_class():
    assert smote_settings(np.array([1, 1, 1]))["single_class"] is True


def test_oversample_classes_of_1_3_6_reach_largest(samples):
    features, labels = samples

    result = oversample(features, labels, smote_settings(labels), seed=0)

    assert result.skipped_reason is None
    values, counts = np.unique(result.y, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {"one": 12, "six": 12, "three": 12, "twelve": 12}
    assert result.synthetic_count == 48 - 22
    assert np.array_equal(result.X[:22], features)
    assert np.array_equal(result.y[:22], labels)


def test_single_sample_class_is_duplicated(samples):
    features, labels = samples

    result = oversample(features, labels, smote_settings(labels), seed=0)

    synthetic = result.X[22:][result.y[22:] == "one"]
    assert len(synthetic) == 11
    assert np.array_equal(synthetic, np.repeat(features[labels == "one"], 11, axis=0))


def test_synthetic_samples_interpolate_within_class(samples):
    features, labels = samples

    result = oversample(features, labels, smote_settings(labels), seed=0)

    for label in ("three", "six"):
        originals = features[labels == label]
        synthetic = result.X[22:][result.y[22:] == label]
        assert len(synthetic) == 12 - len(originals)
        for point in synthetic:
            assert any(
                _is_on_segment(point, originals[i], originals[j])
                for i in range(len(originals))
                for j in range(len(originals))
                if i != j
            ), (label, point)


def test_class_of_two_uses_one_neighbour():
    features = np.array([[0.0, 0.0], [2.0, 4.0], [9.0, 9.0], [9.5, 9.0], [9.0, 9.5], [9.5, 9.5]])
    labels = np.array([0, 0, 1, 1, 1, 1])

    settings = smote_settings(labels)
    result = oversample(features, labels, settings, target_per_class=6, seed=0)

    assert settings["classes"][0]["k_neighbors"] == 1
    synthetic = result.X[6:][result.y[6:] == 0]
    assert len(synthetic) == 4
    for point in synthetic:
        assert _is_on_segment(point, features[0], features[1])


def test_oversample_is_seeded(samples):
    features, labels = samples
    settings = smote_settings(labels)

    first = oversample(features, labels, settings, seed=3)
    second = oversample(features, labels, settings, seed=3)

    assert np.array_equal(first.X, second.X)
    assert np.array_equal(first.y, second.y)


def test_target_per_class_never_undersamples(samples):
    features, labels = samples

    result = oversample(features, labels, smote_settings(labels), target_per_class=5, seed=0)

    counts = dict(zip(*np.unique(result.y, return_counts=True), strict=True))
    assert counts == {"one": 5, "three": 5, "six": 6, "twelve": 12}


def test_integer_features_get_fractional_synthetic_samples():
    features = np.array([[0, 0], [10, 10], [20, 20], [100, 100], [101, 101], [102, 102], [103, 103]])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])

    result = oversample(features, labels, smote_settings(labels), seed=1)

    assert result.X.dtype == np.float64
    assert not np.array_equal(result.X[7:], np.round(result.X[7:]))


def test_single_class_is_skipped_with_reason():
    features = np.arange(8.0).reshape(4, 2)
    labels = np.array([2, 2, 2, 2])

    result = oversample(features, labels, smote_settings(labels))

    assert result.skipped_reason == SINGLE_CLASS_REASON == "single class: fine-tune skipped"
    assert result.synthetic_count == 0
    assert np.array_equal(result.X, features)
    assert np.array_equal(result.y, labels)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_feature_is_rejected(samples, bad_value):
    features, labels = samples
    features = features.copy()
    features[4, 1] = bad_value

    with pytest.raises(DataValidationError, match=r"row 4, column 1") as raised:
        oversample(features, labels, smote_settings(labels))

    assert "impute" in str(raised.value)


def test_empty_input_is_rejected():
    with pytest.raises(EmptyDataError):
        oversample(np.zeros((0, 3)), np.zeros(0), {"k_neighbors": 5})


def test_mismatched_lengths_are_rejected(samples):
    features, labels = samples

    with pytest.raises(DataValidationError, match="one label per row"):
        oversample(features, labels[:-1], smote_settings(labels))


def test_invalid_k_neighbors_is_rejected(samples):
    features, labels = samples

    with pytest.raises(ConfigError, match="k_neighbors"):
        oversample(features, labels, {"k_neighbors": 0})


class TestBalancedBuffer:
    @pytest.fixture
    def stream(self) -> pd.DataFrame:
        # Time-ordered stream: 700 rows of class "a", 250 of "b", 50 of "c", interleaved.
        labels = np.array(["a"] * 700 + ["b"] * 250 + ["c"] * 50)
        labels = labels[np.random.default_rng(0).permutation(len(labels))]
        return pd.DataFrame({"t": np.arange(len(labels)), "x": np.linspace(0, 1, len(labels)), "label": labels})

    def test_caps_and_balances(self, stream):
        buffer = balanced_buffer(stream, size=500, seed=0)

        assert len(buffer) == 500
        assert buffer["label"].value_counts().to_dict() == {"a": 225, "b": 225, "c": 50}

    def test_equal_shares_when_classes_are_large(self, stream):
        buffer = balanced_buffer(stream, size=90, seed=0)

        assert buffer["label"].value_counts().to_dict() == {"a": 30, "b": 30, "c": 30}

    def test_prefers_most_recent_rows(self, stream):
        buffer = balanced_buffer(stream, size=90, seed=0)

        for label, group in buffer.groupby("label"):
            assert group["t"].tolist() == stream.loc[stream["label"] == label, "t"].tolist()[-30:]

    def test_keeps_row_order(self, stream):
        buffer = balanced_buffer(stream, size=90, seed=0)

        assert buffer["t"].is_monotonic_increasing

    def test_small_frame_is_kept_whole(self, stream):
        small = stream.head(40)

        assert balanced_buffer(small, size=1000, seed=0).equals(small)

    def test_random_selection_is_seeded(self, stream):
        first = balanced_buffer(stream, size=90, seed=5, prefer_recent=False)
        second = balanced_buffer(stream, size=90, seed=5, prefer_recent=False)
        other = balanced_buffer(stream, size=90, seed=6, prefer_recent=False)

        assert first.equals(second)
        assert not first.equals(other)
        assert first["label"].value_counts().to_dict() == {"a": 30, "b": 30, "c": 30}

    def test_custom_label_column(self, stream):
        renamed = stream.rename(columns={"label": "segment"})

        buffer = balanced_buffer(renamed, size=30, seed=0, label_column="segment")

        assert buffer["segment"].value_counts().to_dict() == {"a": 10, "b": 10, "c": 10}

    def test_missing_label_column_is_rejected(self, stream):
        with pytest.raises(DataValidationError, match="'target' not found"):
            balanced_buffer(stream, size=30, seed=0, label_column="target")

    def test_missing_labels_are_rejected(self, stream):
        stream.loc[17, "label"] = None

        with pytest.raises(DataValidationError, match="1 missing values, first at index 17"):
            balanced_buffer(stream, size=30, seed=0)

    def test_empty_frame_is_rejected(self, stream):
        with pytest.raises(EmptyDataError):
            balanced_buffer(stream.head(0), size=30, seed=0)

    def test_invalid_size_is_rejected(self, stream):
        with pytest.raises(ConfigError, match="buffer size 0"):
            balanced_buffer(stream, size=0, seed=0)
