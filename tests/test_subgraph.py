"""Subgraphs: hot copies on disk with sha256 checks, and the chain depth that serves a batch."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mycelium.drift.ood import MahalanobisOOD
from mycelium.errors import IntegrityError, RoutingError
from mycelium.experts import InputSchema, build_expert
from mycelium.hashing import sha256_file, sha256_state_dict
from mycelium.patches.lowrank import LowRankPatch
from mycelium.subgraph import DESCRIPTION_FILE, WEIGHTS_FILE, Subgraph, load_subgraph, save_subgraph

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

    def test_per_row_choice_takes_lowest_accepting_depth(self, patched_digits_cnn, uci_digits, mnist_digits):
        subgraph = patched_digits_cnn.patched
        mixed = pd.concat([uci_digits.test.iloc[:40], mnist_digits.test.iloc[:40]])

        prediction = subgraph.predict(mixed, per_row=True)

        ratios = subgraph.ood_ratios(subgraph.inputs(mixed))
        assert ratios.shape == (80, 2)
        accepted_by_expert = ratios[:, 0] <= 1
        rejected_by_both = (ratios > 1).all(axis=1)
        expected = np.where(accepted_by_expert, 0, np.where(rejected_by_both, ratios.argmin(axis=1), 1))
        np.testing.assert_array_equal(prediction.depth, expected)
        np.testing.assert_array_equal(prediction.ood_ratio, ratios[np.arange(80), expected])
        assert set(prediction.depth.tolist()) == {0, 1}

    def test_batch_without_schema_columns_raises(self, digits_cnn, uci_digits):
        batch = uci_digits.test.iloc[:5].drop(columns=["px_07", "px_63"])

        with pytest.raises(RoutingError, match=r"\['px_07', 'px_63'\]"):
            digits_cnn.predict(batch)


GAUSSIAN_COLUMNS = [f"x{i}" for i in range(4)]


@pytest.fixture(scope="module")
def broad_patch_subgraph():
    """An MLP with a patch whose reference is broad: depth 0 is fitted on N(0, 1) inputs and
    depth 1 on N(0, 3^2) inputs, which contain the depth-0 data as their core."""
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    expert = build_expert("mlp", {"in_features": 4, "hidden": [16], "n_classes": 2, "dropout": 0.0})
    expert.eval()
    schema = InputSchema(tuple(GAUSSIAN_COLUMNS), (0.0,) * 4, (1.0,) * 4)
    references = []
    for scale in (1.0, 3.0):
        features = [expert.features(torch.as_tensor(scale * rng.normal(size=(600, 4)), dtype=torch.float32))
                    .detach().numpy().astype(np.float64) for _ in range(2)]
        references.append(MahalanobisOOD(min_tail_samples=4).fit(features[0], features[1], target_fpr=0.05))
    return Subgraph("gaussians", schema, expert, [LowRankPatch(expert, rank=2)], references)


def gaussian_batch(scale, rows, seed):
    values = scale * np.random.default_rng(seed).normal(size=(rows, 4))
    return pd.DataFrame(values, columns=GAUSSIAN_COLUMNS)


class TestBroadPatchReference:
    """A patch's reference that also accepts the old data must not take the old data over."""

    def test_old_batch_stays_at_expert(self, broad_patch_subgraph):
        batch = gaussian_batch(1.0, 50, seed=10)

        prediction = broad_patch_subgraph.predict(batch)

        median = np.median(broad_patch_subgraph.ood_ratios(broad_patch_subgraph.inputs(batch)), axis=0)
        # Choosing the lowest median ratio would pick the patch.
        assert median[1] < median[0] <= 1
        assert prediction.depth.tolist() == [0] * 50

    def test_drifted_batch_goes_to_patch(self, broad_patch_subgraph):
        batch = gaussian_batch(3.0, 50, seed=11)

        assert broad_patch_subgraph.predict(batch).depth.tolist() == [1] * 50

    def test_old_rows_stay_at_expert(self, broad_patch_subgraph):
        rows = gaussian_batch(1.0, 200, seed=12)

        prediction = broad_patch_subgraph.predict(rows, per_row=True)

        ratios = broad_patch_subgraph.ood_ratios(broad_patch_subgraph.inputs(rows))
        both_accept = (ratios <= 1).all(axis=1)
        assert (ratios[both_accept, 1] < ratios[both_accept, 0]).mean() > 0.5
        assert (prediction.depth[both_accept] == 0).all()

    def test_single_row_batch_matches_per_row(self, broad_patch_subgraph):
        rows = pd.concat([gaussian_batch(1.0, 20, seed=13), gaussian_batch(3.0, 20, seed=14)], ignore_index=True)

        expected = broad_patch_subgraph.predict(rows, per_row=True).depth
        single = [broad_patch_subgraph.predict(rows.iloc[[index]]).depth[0] for index in range(len(rows))]

        assert single == expected.tolist()
        assert set(single) == {0, 1}

    def test_batch_of_few_rejected_rows_stays(self, broad_patch_subgraph):
        batch = pd.concat([gaussian_batch(1.0, 46, seed=15), gaussian_batch(6.0, 4, seed=16)], ignore_index=True)

        ratios = broad_patch_subgraph.ood_ratios(broad_patch_subgraph.inputs(batch))
        assert 3 <= (ratios[:, 0] > 1).sum() <= 6
        assert broad_patch_subgraph.predict(batch).depth.tolist() == [0] * 50

    def test_large_old_batch_tolerates_miscalibration(self, broad_patch_subgraph):
        batch = gaussian_batch(1.14, 1000, seed=19)

        ratios = broad_patch_subgraph.ood_ratios(broad_patch_subgraph.inputs(batch))
        # Slightly wider than the calibration data: the expert's reference rejects 6 to 10% of
        # the rows instead of its calibrated 5%, which a test against 5% itself would reject.
        assert 0.06 <= (ratios[:, 0] > 1).mean() <= 0.10
        assert broad_patch_subgraph.predict(batch).depth.tolist() == [0] * 1000

    def test_batch_of_many_rejected_rows_leaves(self, broad_patch_subgraph):
        batch = pd.concat([gaussian_batch(1.0, 30, seed=17), gaussian_batch(6.0, 20, seed=18)], ignore_index=True)

        ratios = broad_patch_subgraph.ood_ratios(broad_patch_subgraph.inputs(batch))
        # Most rows are still accepted by the expert, but 20 or more rejections of 50 are far above
        # twice its calibrated rate of 5%.
        assert np.median(ratios[:, 0]) <= 1
        assert broad_patch_subgraph.predict(batch).depth.tolist() == [1] * 50


def test_fp32_bytes_counts_every_weight(patched_digits_cnn):
    subgraph = patched_digits_cnn.patched
    expert_parameters = sum(parameter.numel() for parameter in subgraph.expert.parameters())
    patch_parameters = sum(parameter.numel() for parameter in subgraph.patches[0].parameters())

    assert subgraph.n_parameters() == expert_parameters + patch_parameters
    assert subgraph.fp32_bytes() == 4 * subgraph.n_parameters()
