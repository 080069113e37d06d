"""Average accuracy, forgetting and backward transfer on accuracy matrices with known results."""

import numpy as np
import pytest

from mycelium.continual.metrics import AccuracyMatrix
from mycelium.errors import ConfigError

NAN = np.nan
# Three parts. Part 0: 0.9, then 0.7, then 0.6. Part 1: 0.8, then 0.85. Part 2: 0.95.
THREE_PARTS = np.array([
    [0.90, NAN, NAN],
    [0.70, 0.80, NAN],
    [0.60, 0.85, 0.95],
])


class TestKnownMatrix:
    def test_average_accuracy_after_each_part(self):
        matrix = AccuracyMatrix(THREE_PARTS)

        assert matrix.average_accuracy(after=0) == pytest.approx(0.90)
        assert matrix.average_accuracy(after=1) == pytest.approx(0.75)
        assert matrix.average_accuracy() == pytest.approx((0.60 + 0.85 + 0.95) / 3)

    def test_forgetting_uses_best_earlier_accuracy(self):
        # Part 0 peaked at 0.90 and ends at 0.60; part 1 peaked at 0.80 (before the last part) and ends at 0.85.
        matrix = AccuracyMatrix(THREE_PARTS)

        assert matrix.forgetting() == pytest.approx(((0.90 - 0.60) + (0.80 - 0.85)) / 2)
        assert matrix.forgetting(after=1) == pytest.approx(0.90 - 0.70)

    def test_backward_transfer_from_just_trained_accuracy(self):
        matrix = AccuracyMatrix(THREE_PARTS)

        assert matrix.backward_transfer() == pytest.approx(((0.60 - 0.90) + (0.85 - 0.80)) / 2)

    def test_newest_accuracy_is_diagonal(self):
        matrix = AccuracyMatrix(THREE_PARTS)

        assert matrix.newest_accuracy() == pytest.approx(0.95)
        assert matrix.newest_accuracy(after=1) == pytest.approx(0.80)

    def test_summary_matches_methods(self):
        matrix = AccuracyMatrix(THREE_PARTS)

        assert matrix.summary() == {
            "average_accuracy": matrix.average_accuracy(),
            "forgetting": matrix.forgetting(),
            "backward_transfer": matrix.backward_transfer(),
            "newest_accuracy": matrix.newest_accuracy(),
        }


class TestEdgeCases:
    def test_single_part_has_no_forgetting(self):
        matrix = AccuracyMatrix(np.array([[0.7]]))

        assert matrix.forgetting() == 0.0
        assert matrix.backward_transfer() == 0.0
        assert matrix.average_accuracy() == pytest.approx(0.7)

    def test_frozen_model_forgets_nothing(self):
        kept = np.array([[0.9, 0.1], [0.9, 0.8]])

        assert AccuracyMatrix(kept).forgetting() == 0.0
        assert AccuracyMatrix(kept).backward_transfer() == 0.0

    def test_upper_triangle_is_ignored(self):
        seen = np.array([[0.9, 0.2], [0.6, 0.8]])
        unseen = np.array([[0.9, NAN], [0.6, 0.8]])

        assert AccuracyMatrix(seen).summary() == AccuracyMatrix(unseen).summary()

    @pytest.mark.parametrize("values", [np.zeros((2, 3)), np.zeros(3), np.zeros((0, 0))])
    def test_rejects_non_square(self, values):
        with pytest.raises(ConfigError, match="square"):
            AccuracyMatrix(values)

    def test_rejects_percentages(self):
        with pytest.raises(ConfigError, match="fractions"):
            AccuracyMatrix(np.array([[90.0]]))

    def test_rejects_missing_seen_accuracy(self):
        with pytest.raises(ConfigError, match="finite"):
            AccuracyMatrix(np.array([[0.9, NAN], [NAN, 0.8]]))

    def test_rejects_part_index_out_of_range(self):
        with pytest.raises(ConfigError, match="after=2"):
            AccuracyMatrix(THREE_PARTS[:2, :2]).average_accuracy(after=2)
