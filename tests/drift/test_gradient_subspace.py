import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mycelium.drift.gradient_subspace import GradientSubspaceOOD, _deskew
from mycelium.errors import ConfigError

TARGET_FPR = 0.05
SHAPE = (1, 12, 12)


def bars(rng: np.random.Generator, n: int, *, vertical: bool, slant: float = 0.0) -> np.ndarray:
    """Images of one bar on faint noise: a vertical bar leans by `slant` pixels per row."""
    images = rng.uniform(0, 0.01, size=(n, 12, 12))
    for image, position in zip(images, rng.integers(3, 9, size=n)):
        for row in range(2, 10):
            if vertical:
                image[row, int(round(position + slant * (row - 5.5)))] = 1.0
            else:
                image[position, row] = 1.0
    return images.reshape(n, -1)


@pytest.fixture(scope="module")
def vertical() -> GradientSubspaceOOD:
    rng = np.random.default_rng(0)
    return GradientSubspaceOOD(SHAPE, n_components=3).fit(
        bars(rng, 300, vertical=True), bars(rng, 200, vertical=True), target_fpr=TARGET_FPR
    )


class TestScores:
    def test_holdout_rejection_meets_target(self, vertical):
        assert vertical.calibrated_fpr <= TARGET_FPR

    def test_fresh_in_domain_rows_accepted(self, vertical):
        accepted = vertical.accepts(bars(np.random.default_rng(1), 500, vertical=True)).mean()
        assert accepted > 0.9

    def test_other_orientation_rejected(self, vertical):
        assert vertical.accepts(bars(np.random.default_rng(2), 100, vertical=False)).mean() == 0.0

    def test_blank_and_full_images_rejected(self, vertical):
        assert not vertical.accepts(np.zeros((1, 144)))[0]
        assert not vertical.accepts(np.ones((1, 144)))[0]

    def test_affine_pixel_scaling_keeps_descriptors(self, vertical):
        # Only blocks of faint background change, through the constant added to each block's norm.
        rows = bars(np.random.default_rng(3), 20, vertical=True)
        np.testing.assert_allclose(vertical.descriptors(rows * 4.0 - 1.0), vertical.descriptors(rows), atol=0.02)

    def test_class_subspaces_accept_both_classes(self):
        rng = np.random.default_rng(4)
        train = np.vstack([bars(rng, 300, vertical=True), bars(rng, 300, vertical=False)])
        labels = np.r_[np.zeros(300), np.ones(300)]
        holdout = np.vstack([bars(rng, 100, vertical=True), bars(rng, 100, vertical=False)])
        ood = GradientSubspaceOOD(SHAPE, n_components=3).fit(train, holdout, target_fpr=TARGET_FPR, labels=labels)
        assert ood.n_classes == 2
        assert ood.accepts(bars(rng, 100, vertical=False)).mean() > 0.9

    def test_class_of_one_row_scores_distance_to_it(self):
        rng = np.random.default_rng(5)
        train = bars(rng, 3, vertical=True)
        ood = GradientSubspaceOOD(SHAPE, n_components=3).fit(
            train, bars(rng, 200, vertical=True), target_fpr=TARGET_FPR, labels=[0, 0, 1]
        )
        assert ood.score(train[2:])[0] == pytest.approx(0.0, abs=1e-12)


class TestDeskew:
    def test_slanted_bar_becomes_upright(self):
        rng = np.random.default_rng(6)
        images = torch.as_tensor(bars(rng, 1, vertical=True, slant=0.5)).reshape(1, *SHAPE)
        upright = _deskew(images, 0.0)[0, 0].numpy()
        # The bright column of every bar row is the same after the shear.
        columns = {int(np.argmax(upright[row])) for row in range(3, 9)}
        assert len(columns) == 1

    def test_deskewed_descriptor_is_closer_to_upright(self):
        slanted = bars(np.random.default_rng(7), 1, vertical=True, slant=0.5)
        upright = bars(np.random.default_rng(7), 1, vertical=True)
        distances = {}
        for deskew in (False, True):
            ood = GradientSubspaceOOD(SHAPE, deskew=deskew)
            ood.background = 0.0
            distances[deskew] = np.linalg.norm(ood.descriptors(slanted) - ood.descriptors(upright))
        assert distances[True] < 0.5 * distances[False]

    def test_blank_image_stays_blank(self):
        assert torch.all(_deskew(torch.zeros(1, *SHAPE, dtype=torch.float64), 0.0) == 0.0)


class TestState:
    def test_safetensors_round_trip_keeps_scores(self, vertical, tmp_path):
        rows = bars(np.random.default_rng(8), 30, vertical=True)
        save_file(vertical.to_tensors(), tmp_path / "ood.safetensors")
        (tmp_path / "ood.json").write_text(json.dumps(vertical.metadata(), allow_nan=False))
        restored = GradientSubspaceOOD.from_tensors(
            load_file(tmp_path / "ood.safetensors"), json.loads((tmp_path / "ood.json").read_text())
        )
        np.testing.assert_array_equal(restored.score(rows), vertical.score(rows))
        assert restored.threshold == vertical.threshold

    def test_mismatched_tensors_raise(self, vertical):
        tensors = vertical.to_tensors()
        tensors["bases"] = tensors["bases"][:, :2]
        with pytest.raises(ValueError, match="different fits"):
            GradientSubspaceOOD.from_tensors(tensors, vertical.metadata())

    def test_unfitted_score_raises(self):
        with pytest.raises(RuntimeError, match="not fitted"):
            GradientSubspaceOOD(SHAPE).score(np.zeros((1, 144)))

    def test_wrong_width_raises(self, vertical):
        with pytest.raises(ValueError, match="144"):
            vertical.score(np.zeros((1, 64)))

    def test_labels_of_wrong_length_raise(self):
        rng = np.random.default_rng(9)
        with pytest.raises(ValueError, match="one label per row"):
            GradientSubspaceOOD(SHAPE).fit(bars(rng, 10, vertical=True), bars(rng, 200, vertical=True),
                                           target_fpr=TARGET_FPR, labels=[0, 1])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image_shape": (3, 12, 12)}, "channels"),
        ({"image_shape": (12, 12)}, "image_shape"),
        ({"cells": 1}, "cells"),
        ({"cells": 13}, "cells"),
        ({"bins": 1}, "bins"),
        ({"n_components": 0}, "n_components"),
        ({"deskew": "yes"}, "deskew"),
    ],
)
def test_invalid_argument_names_parameter(kwargs, name):
    arguments = {"image_shape": SHAPE} | kwargs
    with pytest.raises(ConfigError, match=name):
        GradientSubspaceOOD(**arguments)
