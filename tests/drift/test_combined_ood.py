import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from mycelium.drift import (
    CombinedOOD,
    MahalanobisOOD,
    domain_check_inputs,
    fit_domain_check,
    ood_from_tensors,
    row_statistics,
)
from mycelium.errors import ConfigError

TARGET_FPR = 0.05


@pytest.fixture(scope="module")
def gaussian_pair() -> tuple[CombinedOOD, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(0)
    train, holdout = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    detectors = {
        "first": MahalanobisOOD().fit(train[:, :2], holdout[:, :2], target_fpr=TARGET_FPR),
        "second": MahalanobisOOD().fit(train[:, 2:], holdout[:, 2:], target_fpr=TARGET_FPR),
    }
    combined = CombinedOOD(detectors).fit({"first": holdout[:, :2], "second": holdout[:, 2:]}, target_fpr=TARGET_FPR)
    return combined, holdout, rng


def split(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {"first": rows[:, :2], "second": rows[:, 2:]}


class TestCalibration:
    def test_joint_holdout_fpr_meets_target(self, gaussian_pair):
        combined, _, _ = gaussian_pair
        assert combined.calibrated_fpr <= TARGET_FPR
        assert combined.calibrated_fpr > TARGET_FPR - 0.002

    def test_each_component_rejects_less_than_target(self, gaussian_pair):
        # Two independent components share the budget: each rejects about half of it.
        combined, _, _ = gaussian_pair
        assert combined.level > 1 - TARGET_FPR
        for fpr in combined.component_fpr.values():
            assert 0.015 < fpr < 0.035

    def test_fresh_in_domain_fpr_near_target(self, gaussian_pair):
        combined, _, rng = gaussian_pair
        fpr = 1 - combined.accepts(split(rng.normal(size=(5000, 4)))).mean()
        assert abs(fpr - TARGET_FPR) < 0.015

    def test_separate_thresholds_would_reject_more(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        rejected = np.zeros(len(holdout), dtype=bool)
        for name, rows in split(holdout).items():
            rejected |= ~combined.detectors[name].accepts(rows)
        assert rejected.mean() > 0.09

    def test_score_is_largest_component_ratio(self, gaussian_pair):
        combined, _, rng = gaussian_pair
        rows = split(rng.normal(size=(20, 4)) * 2)
        ratios = combined.component_ratios(rows)
        np.testing.assert_array_equal(combined.score(rows), np.maximum(ratios["first"], ratios["second"]))

    def test_one_component_keeps_its_own_level(self):
        rng = np.random.default_rng(1)
        train, holdout = rng.normal(size=(500, 3)), rng.normal(size=(400, 3))
        alone = MahalanobisOOD().fit(train, holdout, target_fpr=TARGET_FPR)
        combined = CombinedOOD({"only": alone}).fit({"only": holdout}, target_fpr=TARGET_FPR)
        assert combined.thresholds["only"] == alone.threshold


class TestFitScores:
    def test_scores_give_same_thresholds_as_inputs(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        scores = {name: detector.score(split(holdout)[name]) for name, detector in combined.detectors.items()}
        from_scores = CombinedOOD(combined.detectors).fit_scores(scores, target_fpr=TARGET_FPR)
        assert from_scores.thresholds == combined.thresholds
        assert from_scores.calibrated_fpr == combined.calibrated_fpr

    def test_scores_of_different_lengths_raise(self, gaussian_pair):
        combined, _, _ = gaussian_pair
        with pytest.raises(ValueError, match="different numbers of rows"):
            CombinedOOD(combined.detectors).fit_scores({"first": np.zeros(400), "second": np.zeros(300)}, target_fpr=TARGET_FPR)

    def test_missing_scores_raise(self, gaussian_pair):
        combined, _, _ = gaussian_pair
        with pytest.raises(ConfigError, match="second"):
            CombinedOOD(combined.detectors).fit_scores({"first": np.zeros(400)}, target_fpr=TARGET_FPR)


class TestInputs:
    def test_missing_input_raises(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        with pytest.raises(ConfigError, match="second"):
            combined.score({"first": holdout[:, :2]})

    def test_different_row_counts_raise(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        with pytest.raises(ValueError, match="different numbers of rows"):
            combined.score({"first": holdout[:5, :2], "second": holdout[:6, 2:]})

    def test_unregistered_detector_raises(self):
        with pytest.raises(ConfigError, match="not of a registered kind"):
            CombinedOOD({"odd": object()})

    def test_holdout_too_small_raises(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        with pytest.raises(ConfigError, match="needs at least 200"):
            CombinedOOD(combined.detectors).fit(split(holdout[:100]), target_fpr=TARGET_FPR)

    def test_uncalibrated_score_raises(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        with pytest.raises(RuntimeError, match="not calibrated"):
            CombinedOOD(combined.detectors).score(split(holdout))


class TestRowStatistics:
    def test_known_answer(self):
        rows = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
        expected = [2.0, np.sqrt(2.0), 0.0, 0.4, 2.0, 3.6, 4.0]
        np.testing.assert_allclose(row_statistics(rows)[0], expected)

    def test_constant_row_has_no_spread(self):
        assert row_statistics(np.full((1, 64), 3.0))[0, 1] == 0.0


class TestDigitsCheck:
    """The digits domain's check: gradient histograms with and without deskewing, combined."""

    @pytest.fixture(scope="class")
    def feature_reference(self, digits_cnn, uci_digits) -> MahalanobisOOD:
        # Fitted here, as train_expert fits it, so the test does not depend on what the subgraph stores.
        train, holdout = (digits_cnn.base_features(digits_cnn.inputs(f)) for f in (uci_digits.train, uci_digits.holdout))
        return MahalanobisOOD(min_tail_samples=4).fit(train, holdout, target_fpr=TARGET_FPR)

    @pytest.fixture(scope="class")
    def digits_check(self, digits_cnn, uci_digits, feature_reference) -> CombinedOOD:
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        return fit_domain_check(
            feature_reference, train.numpy(), holdout.numpy(), digits_cnn.base_features(holdout),
            target_fpr=TARGET_FPR, min_tail_samples=4, seed=7, image_shape=digits_cnn.schema.image_shape,
            train_labels=uci_digits.train["label"].to_numpy(), holdout_labels=uci_digits.holdout["label"].to_numpy(),
        )

    @staticmethod
    def images(subgraph, pixels: np.ndarray) -> dict[str, np.ndarray]:
        inputs = subgraph.inputs(pd.DataFrame(pixels, columns=list(subgraph.schema.columns)))
        return domain_check_inputs(subgraph.base_features(inputs), inputs.numpy())

    def test_components_share_the_budget(self, digits_check):
        assert sorted(digits_check.detectors) == ["gradient", "gradient_deskewed"]
        assert digits_check.calibrated_fpr <= TARGET_FPR
        assert digits_check.detectors["gradient"].n_classes == 10
        assert digits_check.detectors["gradient_deskewed"].deskew

    def test_cross_fitting_uses_every_row(self, digits_check, uci_digits):
        n_rows = len(uci_digits.train) + len(uci_digits.holdout)
        assert digits_check.n_holdout == n_rows
        assert digits_check.detectors["gradient"].n_train == n_rows
        assert digits_check.detectors["gradient"].n_holdout == n_rows

    def test_without_cross_fitting_holdout_calibrates(self, digits_cnn, uci_digits, feature_reference):
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        check = fit_domain_check(
            feature_reference, train.numpy(), holdout.numpy(), digits_cnn.base_features(holdout),
            target_fpr=TARGET_FPR, min_tail_samples=4, seed=7, image_shape=digits_cnn.schema.image_shape,
            train_labels=uci_digits.train["label"].to_numpy(), cross_fit_folds=0,
        )
        assert check.n_holdout == len(uci_digits.holdout)
        assert check.detectors["gradient"].n_train == len(uci_digits.train)
        assert check.calibrated_fpr <= TARGET_FPR

    def test_cross_fitting_without_holdout_labels_raises(self, digits_cnn, uci_digits, feature_reference):
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        with pytest.raises(ConfigError, match="holdout_labels"):
            fit_domain_check(feature_reference, train.numpy(), holdout.numpy(), digits_cnn.base_features(holdout),
                             target_fpr=TARGET_FPR, min_tail_samples=4, image_shape=digits_cnn.schema.image_shape,
                             train_labels=uci_digits.train["label"].to_numpy())

    def test_chosen_components_are_built(self, digits_cnn, uci_digits, feature_reference):
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        check = fit_domain_check(
            feature_reference, train.numpy(), holdout.numpy(), digits_cnn.base_features(holdout),
            target_fpr=TARGET_FPR, min_tail_samples=4, seed=7, autoencoder={"epochs": 5},
            components=("features", "autoencoder", "row_statistics"),
        )
        assert sorted(check.detectors) == ["autoencoder", "features", "row_statistics"]
        assert check.detectors["features"] is feature_reference
        assert check.detectors["autoencoder"].bottleneck == 16

    def test_unknown_component_raises(self, digits_cnn, uci_digits, feature_reference):
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        with pytest.raises(ConfigError, match="isolation_forest"):
            fit_domain_check(feature_reference, train.numpy(), holdout.numpy(), digits_cnn.base_features(holdout),
                             target_fpr=TARGET_FPR, components=("isolation_forest",))

    def test_features_without_reference_raise(self, digits_cnn, uci_digits):
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        with pytest.raises(ConfigError, match="feature_reference"):
            fit_domain_check(None, train.numpy(), holdout.numpy(), None, target_fpr=TARGET_FPR, min_tail_samples=4,
                             components=("features", "row_statistics"))

    def test_gradient_without_image_shape_raises(self, digits_cnn, uci_digits, feature_reference):
        train, holdout = digits_cnn.inputs(uci_digits.train), digits_cnn.inputs(uci_digits.holdout)
        with pytest.raises(ConfigError, match="image_shape"):
            fit_domain_check(feature_reference, train.numpy(), holdout.numpy(), digits_cnn.base_features(holdout),
                             target_fpr=TARGET_FPR, min_tail_samples=4)

    def test_held_out_digits_are_accepted(self, digits_check, digits_cnn, uci_digits):
        pixels = uci_digits.test.drop(columns="label").to_numpy()
        assert digits_check.accepts(self.images(digits_cnn, pixels)).mean() > 0.9

    def test_feature_check_alone_accepts_noise(self, feature_reference, digits_cnn):
        # The fault the combined check fixes: noise lands near the digits in feature space, and
        # routing sends a batch to a domain that accepts at least half its rows (measured: 62%).
        noise = np.random.default_rng(1).uniform(0, 16, size=(200, 64))
        assert feature_reference.accepts(self.images(digits_cnn, noise)["features"]).mean() > 0.5

    def test_uniform_noise_batch_is_rejected(self, digits_check, digits_cnn):
        noise = np.random.default_rng(1).uniform(0, 16, size=(200, 64))
        assert digits_check.accepts(self.images(digits_cnn, noise)).mean() == 0.0

    def test_blank_image_is_rejected(self, digits_check, digits_cnn):
        assert not digits_check.accepts(self.images(digits_cnn, np.zeros((1, 64))))[0]

    def test_full_ink_image_is_rejected(self, digits_check, digits_cnn):
        assert not digits_check.accepts(self.images(digits_cnn, np.full((1, 64), 16.0)))[0]

    def test_safetensors_round_trip_keeps_scores(self, digits_check, digits_cnn, uci_digits, tmp_path):
        rows = self.images(digits_cnn, uci_digits.test.drop(columns="label").to_numpy()[:50])
        save_file(digits_check.to_tensors(), tmp_path / "ood.safetensors")
        (tmp_path / "ood.json").write_text(json.dumps(digits_check.metadata(), allow_nan=False))
        restored = CombinedOOD.from_tensors(load_file(tmp_path / "ood.safetensors"), json.loads((tmp_path / "ood.json").read_text()))
        np.testing.assert_allclose(restored.score(rows), digits_check.score(rows), rtol=1e-12)
        assert restored.thresholds == digits_check.thresholds

    def test_json_round_trip_keeps_scores(self, digits_check, digits_cnn, uci_digits):
        rows = self.images(digits_cnn, uci_digits.test.drop(columns="label").to_numpy()[:50])
        restored = CombinedOOD.from_json(json.loads(json.dumps(digits_check.to_json(), allow_nan=False)))
        np.testing.assert_array_equal(restored.score(rows), digits_check.score(rows))

    def test_unknown_kind_in_state_raises(self, digits_check):
        metadata = json.loads(json.dumps(digits_check.metadata()))
        metadata["components"]["gradient"]["kind"] = "isolation_forest"
        with pytest.raises(ValueError, match="unknown kind 'isolation_forest'"):
            CombinedOOD.from_tensors(digits_check.to_tensors(), metadata)


class TestLoading:
    def test_combined_state_loads_as_combined(self, gaussian_pair):
        combined, holdout, _ = gaussian_pair
        restored = ood_from_tensors(combined.to_tensors(), combined.metadata())
        assert isinstance(restored, CombinedOOD)
        np.testing.assert_array_equal(restored.score(split(holdout[:20])), combined.score(split(holdout[:20])))

    def test_mahalanobis_state_loads_as_mahalanobis(self, gaussian_pair):
        combined, _, _ = gaussian_pair
        single = combined.detectors["first"]
        restored = ood_from_tensors(single.to_tensors(), single.metadata())
        assert isinstance(restored, MahalanobisOOD)
        assert restored.threshold == single.threshold
