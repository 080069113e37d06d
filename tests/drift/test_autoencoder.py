import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mycelium.drift import AutoencoderOOD
from mycelium.errors import ConfigError

TARGET_FPR = 0.05
# FPR on 5,000 fresh rows against a threshold from 1,000 held-out rows: the quantile's own
# standard error is about 0.007 and the fresh rows add about 0.003. Measured here: 0.040.
FPR_TOLERANCE = 0.02


def low_rank_rows(rng: np.random.Generator, n: int, basis: np.ndarray) -> np.ndarray:
    """Rows near a 3-dimensional subspace of 12 dimensions, with small isotropic noise."""
    return rng.normal(size=(n, basis.shape[0])) @ basis + 0.1 * rng.normal(size=(n, basis.shape[1]))


@pytest.fixture(scope="module")
def fitted() -> tuple[AutoencoderOOD, np.random.Generator, np.ndarray]:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 12))
    train, holdout = low_rank_rows(rng, 2000, basis), low_rank_rows(rng, 1000, basis)
    ood = AutoencoderOOD(hidden=(32,), bottleneck=3, epochs=40, seed=1).fit(train, holdout, target_fpr=TARGET_FPR)
    return ood, rng, basis


class TestCalibration:
    def test_fresh_in_domain_fpr_near_target(self, fitted):
        ood, rng, basis = fitted
        fpr = 1 - ood.accepts(low_rank_rows(rng, 5000, basis)).mean()
        assert abs(fpr - TARGET_FPR) < FPR_TOLERANCE

    def test_holdout_fpr_is_at_most_target(self, fitted):
        ood, _, _ = fitted
        assert ood.calibrated_fpr <= TARGET_FPR
        assert ood.calibrated_fpr > TARGET_FPR - 0.005

    def test_rows_off_the_subspace_are_rejected(self, fitted):
        ood, rng, _ = fitted
        assert ood.accepts(rng.normal(size=(200, 12)) * 2).mean() < 0.05

    def test_holdout_too_small_raises(self):
        rng = np.random.default_rng(1)
        with pytest.raises(ConfigError, match="50 rows but target_fpr=0.05 needs at least 200"):
            AutoencoderOOD(bottleneck=2, epochs=1).fit(rng.normal(size=(300, 4)), rng.normal(size=(50, 4)), target_fpr=0.05)


class TestDigits:
    """UCI digits: the autoencoder on globally standardized pixels."""

    @pytest.fixture(scope="class")
    def digits_ood(self, uci_digits):
        columns = [c for c in uci_digits.train.columns if c != "label"]
        ood = AutoencoderOOD(hidden=(64,), bottleneck=16, epochs=60, scaling="global", min_tail_samples=4)
        return ood.fit(uci_digits.train[columns].to_numpy(), uci_digits.holdout[columns].to_numpy(), target_fpr=TARGET_FPR)

    def test_held_out_digits_are_accepted(self, digits_ood, uci_digits):
        test = uci_digits.test.drop(columns="label").to_numpy()
        assert digits_ood.accepts(test).mean() > 0.9

    def test_blank_image_is_rejected(self, digits_ood):
        assert not digits_ood.accepts(np.zeros((1, 64)))[0]

    def test_uniform_noise_is_rejected(self, digits_ood):
        noise = np.random.default_rng(1).uniform(0, 16, size=(200, 64))
        assert digits_ood.accepts(noise).mean() == 0.0

    def test_mnist_digits_score_higher(self, digits_ood, uci_digits, mnist_digits):
        inside = digits_ood.score(uci_digits.test.drop(columns="label").to_numpy())
        outside = digits_ood.score(mnist_digits.test.drop(columns="label").to_numpy())
        assert np.median(outside) > 2 * np.median(inside)


class TestState:
    def test_safetensors_round_trip_keeps_scores(self, fitted, tmp_path):
        ood, rng, basis = fitted
        rows = low_rank_rows(rng, 50, basis)
        save_file(ood.to_tensors(), tmp_path / "ood.safetensors")
        (tmp_path / "ood.json").write_text(json.dumps(ood.metadata(), allow_nan=False))
        restored = AutoencoderOOD.from_tensors(
            load_file(tmp_path / "ood.safetensors"), json.loads((tmp_path / "ood.json").read_text())
        )
        np.testing.assert_array_equal(restored.score(rows), ood.score(rows))
        assert restored.threshold == ood.threshold
        assert restored.calibrated_fpr == ood.calibrated_fpr

    def test_same_seed_gives_same_weights(self):
        rng = np.random.default_rng(2)
        train, holdout = rng.normal(size=(300, 6)), rng.normal(size=(200, 6))
        first = AutoencoderOOD(bottleneck=2, epochs=3, seed=5).fit(train, holdout, target_fpr=0.05)
        second = AutoencoderOOD(bottleneck=2, epochs=3, seed=5).fit(train, holdout, target_fpr=0.05)
        for name, tensor in first.to_tensors().items():
            assert torch.equal(tensor, second.to_tensors()[name])

    def test_mismatched_architecture_raises(self, fitted):
        ood, _, _ = fitted
        metadata = ood.metadata() | {"hidden": [16]}
        with pytest.raises(ValueError, match="shape"):
            AutoencoderOOD.from_tensors(ood.to_tensors(), metadata)

    def test_missing_weight_raises(self, fitted):
        ood, _, _ = fitted
        tensors = ood.to_tensors()
        del tensors["module.0.weight"]
        with pytest.raises(ValueError, match="keys"):
            AutoencoderOOD.from_tensors(tensors, ood.metadata())

    def test_nan_weight_raises(self, fitted):
        ood, _, _ = fitted
        tensors = ood.to_tensors()
        tensors["module.0.bias"] = torch.full_like(tensors["module.0.bias"], float("nan"))
        with pytest.raises(ValueError, match="NaN"):
            AutoencoderOOD.from_tensors(tensors, ood.metadata())


class TestInputs:
    def test_constant_feature_gives_finite_scores(self):
        rng = np.random.default_rng(3)
        rows = np.column_stack([rng.normal(size=(600, 3)), np.full(600, 7.0)])
        ood = AutoencoderOOD(bottleneck=2, epochs=5).fit(rows[:400], rows[400:], target_fpr=0.05)
        assert np.all(np.isfinite(ood.score(rows)))
        assert ood.scale[3] == 1.0

    def test_unfitted_score_raises(self):
        with pytest.raises(RuntimeError, match="not fitted"):
            AutoencoderOOD().score(np.zeros((1, 3)))

    def test_nan_input_raises(self, fitted):
        ood, _, _ = fitted
        rows = np.zeros((3, 12))
        rows[1, 4] = np.nan
        with pytest.raises(ValueError, match="NaN or infinity in 1 rows"):
            ood.score(rows)

    def test_wrong_width_raises(self, fitted):
        ood, _, _ = fitted
        with pytest.raises(ValueError, match="expects 12"):
            ood.score(np.zeros((2, 5)))

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"bottleneck": 0}, "bottleneck"),
            ({"hidden": (0,)}, "hidden"),
            ({"epochs": 0}, "epochs"),
            ({"lr": 0.0}, "lr"),
            ({"weight_decay": -1.0}, "weight_decay"),
            ({"scaling": "minmax"}, "scaling"),
        ],
    )
    def test_invalid_argument_names_parameter(self, kwargs, name):
        with pytest.raises(ConfigError, match=name):
            AutoencoderOOD(**kwargs)

    def test_bottleneck_as_wide_as_input_raises(self):
        rng = np.random.default_rng(4)
        with pytest.raises(ConfigError, match="bottleneck=4 must be smaller"):
            AutoencoderOOD(bottleneck=4).fit(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)), target_fpr=0.05)


def test_fit_leaves_global_torch_generator_alone():
    rng = np.random.default_rng(5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    AutoencoderOOD(bottleneck=2, epochs=1, seed=9).fit(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)), target_fpr=0.05)
    assert torch.equal(torch.rand(3), expected)
