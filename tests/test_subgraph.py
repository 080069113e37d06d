"""Subgraphs: hot copies on disk with sha256 checks, and the chain depth that serves a batch."""

import json

import numpy as np
import pandas as pd
import pytest

from mycelium.errors import IntegrityError, RoutingError
from mycelium.hashing import sha256_file, sha256_state_dict
from mycelium.subgraph import DESCRIPTION_FILE, WEIGHTS_FILE, load_subgraph, save_subgraph

BATCH_ROWS = 85


def batches(frame, count):
    return [frame.iloc[start : start + BATCH_ROWS] for start in range(0, count * BATCH_ROWS, BATCH_ROWS)]


class TestSaveLoad:
    def test_round_trip_gives_identical_predictions(self, patched_digits_cnn, uci_digits, mnist_digits, tmp_path):
        subgraph = patched_digits_cnn.patched

        loaded = load_subgraph(save_subgraph(subgraph, tmp_path / "hot"))

        assert loaded.depth == 1
        assert sha256_state_dict(loaded.state_dict()) == sha256_state_dict(subgraph.state_dict())
        assert loaded.describe() == subgraph.describe()
        for frame in (uci_digits.test.iloc[:170], mnist_digits.test.iloc[:170]):
            for per_row in (False, True):
                expected, actual = subgraph.predict(frame, per_row=per_row), loaded.predict(frame, per_row=per_row)
                np.testing.assert_array_equal(actual.labels, expected.labels)
                np.testing.assert_array_equal(actual.depth, expected.depth)
                np.testing.assert_array_equal(actual.ood_ratio, expected.ood_ratio)

    def test_description_records_weights_sha256(self, digits_cnn, tmp_path):
        folder = save_subgraph(digits_cnn, tmp_path / "hot")

        description = json.loads((folder / DESCRIPTION_FILE).read_text())
        assert description["weights_sha256"] == sha256_file(folder / WEIGHTS_FILE)
        assert description["architecture"] == "cnn"

    def test_flipped_byte_raises_integrity_error(self, digits_cnn, tmp_path):
        folder = save_subgraph(digits_cnn, tmp_path / "hot")
        weights = folder / WEIGHTS_FILE
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))

        with pytest.raises(IntegrityError) as raised:
            load_subgraph(folder)

        message = str(raised.value)
        assert str(weights) in message
        assert "changed or truncated" in message

    def test_truncated_weights_raise_integrity_error(self, digits_cnn, tmp_path):
        folder = save_subgraph(digits_cnn, tmp_path / "hot")
        weights = folder / WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[:100])

        with pytest.raises(IntegrityError, match="changed or truncated"):
            load_subgraph(folder)

    @pytest.mark.parametrize("missing", [WEIGHTS_FILE, DESCRIPTION_FILE])
    def test_missing_file_raises_integrity_error(self, digits_cnn, tmp_path, missing):
        folder = save_subgraph(digits_cnn, tmp_path / "hot")
        (folder / missing).unlink()

        with pytest.raises(IntegrityError, match="incomplete"):
            load_subgraph(folder)

    def test_save_replaces_previous_copy(self, digits_cnn, patched_digits_cnn, tmp_path):
        save_subgraph(patched_digits_cnn.patched, tmp_path / "hot")

        folder = save_subgraph(digits_cnn, tmp_path / "hot")

        assert load_subgraph(folder).depth == 0
        assert sorted(path.name for path in tmp_path.iterdir()) == ["hot"]
        assert sorted(path.name for path in folder.iterdir()) == [DESCRIPTION_FILE, WEIGHTS_FILE]


class TestDepthChoice:
    def test_old_regime_batches_use_depth_zero(self, patched_digits_cnn, uci_digits):
        for batch in batches(uci_digits.test, 4):
            prediction = patched_digits_cnn.patched.predict(batch)

            assert prediction.depth.tolist() == [0] * len(batch)

    def test_new_regime_batches_use_patch_depth(self, patched_digits_cnn, mnist_digits):
        for batch in batches(mnist_digits.test, 3):
            prediction = patched_digits_cnn.patched.predict(batch)

            assert prediction.depth.tolist() == [1] * len(batch)

    def test_old_regime_predictions_match_bare_expert(self, patched_digits_cnn, digits_cnn, uci_digits):
        batch = uci_digits.test.iloc[:BATCH_ROWS]

        np.testing.assert_array_equal(
            patched_digits_cnn.patched.predict(batch).labels, digits_cnn.predict(batch).labels
        )

    def test_per_row_choice_takes_nearest_reference(self, patched_digits_cnn, uci_digits, mnist_digits):
        subgraph = patched_digits_cnn.patched
        mixed = pd.concat([uci_digits.test.iloc[:40], mnist_digits.test.iloc[:40]])

        prediction = subgraph.predict(mixed, per_row=True)

        ratios = subgraph.ood_ratios(subgraph.inputs(mixed))
        assert ratios.shape == (80, 2)
        np.testing.assert_array_equal(prediction.depth, ratios.argmin(axis=1))
        np.testing.assert_array_equal(prediction.ood_ratio, ratios.min(axis=1))
        assert set(prediction.depth.tolist()) == {0, 1}

    def test_batch_without_schema_columns_raises(self, digits_cnn, uci_digits):
        batch = uci_digits.test.iloc[:5].drop(columns=["px_07", "px_63"])

        with pytest.raises(RoutingError, match=r"\['px_07', 'px_63'\]"):
            digits_cnn.predict(batch)


def test_fp32_bytes_counts_every_weight(patched_digits_cnn):
    subgraph = patched_digits_cnn.patched
    expert_parameters = sum(parameter.numel() for parameter in subgraph.expert.parameters())
    patch_parameters = sum(parameter.numel() for parameter in subgraph.patches[0].parameters())

    assert subgraph.n_parameters() == expert_parameters + patch_parameters
    assert subgraph.fp32_bytes() == 4 * subgraph.n_parameters()
