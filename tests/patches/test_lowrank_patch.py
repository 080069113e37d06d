"""Low-rank patches beside a frozen expert: identity at start, conv and linear deltas, real training."""

import numpy as np
import pytest
import torch

from mycelium.config import ExpertTraining, Patch
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError
from mycelium.experts import build_expert
from mycelium.experts.fitting import train_expert
from mycelium.experts.training import accuracy
from mycelium.hashing import sha256_state_dict
from mycelium.patches import LowRankPatch, PatchedExpert
from mycelium.patches.training import train_patch

CNN_CONFIG = {"image_shape": [1, 8, 8], "channels": [8, 16], "hidden": 32, "n_classes": 10, "dropout": 0.0}
MLP_CONFIG = {"in_features": 64, "hidden": [32, 16], "n_classes": 10, "dropout": 0.0}
CONFIGS = {"cnn": CNN_CONFIG, "mlp": MLP_CONFIG}


def build(architecture: str):
    torch.manual_seed(0)
    return build_expert(architecture, CONFIGS[architecture]).eval()


def accuracy_at_depth(module: PatchedExpert, x: torch.Tensor, labels: np.ndarray, depth: int) -> float:
    with torch.no_grad():
        predicted = module(x, depth=depth).argmax(1)
    return accuracy(predicted, torch.as_tensor(labels))


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
class TestFreshPatch:
    def test_leaves_outputs_identical(self, architecture):
        expert = build(architecture)
        patched = PatchedExpert(expert, [LowRankPatch(expert, rank=4, seed=3)]).eval()
        x = torch.randn(6, 64)

        assert torch.equal(patched(x), expert(x))
        assert torch.equal(patched.features(x), expert.features(x))

    def test_has_a_delta_for_every_parameter(self, architecture):
        expert = build(architecture)
        patch = LowRankPatch(expert, rank=4)

        deltas = patch.deltas()

        shapes = {name: tuple(parameter.shape) for name, parameter in expert.named_parameters()}
        assert {name: tuple(delta.shape) for name, delta in deltas.items()} == shapes
        assert all(not delta.any() for delta in deltas.values())

    def test_freezes_the_expert(self, architecture):
        expert = build(architecture)

        PatchedExpert(expert, [LowRankPatch(expert)])

        assert not any(parameter.requires_grad for parameter in expert.parameters())


class TestDeltas:
    def test_conv_kernel_delta_changes_output(self):
        expert = build("cnn")
        patch = LowRankPatch(expert, rank=2)
        with torch.no_grad():
            patch.up["conv__0__weight"].fill_(0.5)
        patched = PatchedExpert(expert, [patch]).eval()
        x = torch.randn(4, 64)

        delta = patch.deltas()["conv.0.weight"]

        assert delta.shape == (8, 1, 3, 3)
        assert delta.abs().sum() > 0
        assert not torch.allclose(patched(x), expert(x))
        assert torch.equal(patched(x, depth=0), expert(x))

    def test_linear_delta_changes_output(self):
        expert = build("mlp")
        patch = LowRankPatch(expert, rank=2)
        with torch.no_grad():
            patch.up["output__weight"].fill_(0.5)
        patched = PatchedExpert(expert, [patch]).eval()
        x = torch.randn(4, 64)

        assert not torch.allclose(patched(x), expert(x))
        torch.testing.assert_close(patched.features(x), expert.features(x))

    def test_delta_is_scaled_low_rank_product(self):
        expert = build("mlp")
        patch = LowRankPatch(expert, rank=3, alpha=6.0)
        with torch.no_grad():
            patch.up["body__0__weight"].normal_()

        delta = patch.deltas()["body.0.weight"]

        expected = patch.up["body__0__weight"] @ patch.down["body__0__weight"] * 2.0
        torch.testing.assert_close(delta, expected)
        assert torch.linalg.matrix_rank(delta) == 3

    def test_rank_above_layer_dims_is_capped(self):
        expert = build("cnn")

        patch = LowRankPatch(expert, rank=100)

        # conv.0 maps 1 x 3 x 3 inputs to 8 channels, and output maps 32 hidden units to 10 classes.
        assert patch.down["conv__0__weight"].shape == (8, 9)
        assert patch.up["conv__0__weight"].shape == (8, 8)
        assert patch.down["conv__2__weight"].shape == (16, 72)
        assert patch.up["output__weight"].shape == (10, 10)
        assert patch.down["output__weight"].shape == (10, 32)
        assert {name: delta.shape for name, delta in patch.deltas().items()} == {
            name: parameter.shape for name, parameter in expert.named_parameters()
        }

    @pytest.mark.parametrize("rank", [0, -1])
    def test_rank_below_one_raises(self, rank):
        with pytest.raises(ConfigError, match=f"rank must be at least 1, got {rank}"):
            LowRankPatch(build("mlp"), rank=rank)

    def test_chain_applies_patches_in_order(self):
        expert = build("mlp")
        first, second = LowRankPatch(expert, seed=1), LowRankPatch(expert, seed=2)
        with torch.no_grad():
            first.bias["output__bias"].fill_(1.0)
            second.bias["output__bias"].fill_(2.0)
        chain = PatchedExpert(expert, [first, second]).eval()
        x = torch.randn(3, 64)

        base = expert(x)

        torch.testing.assert_close(chain(x, depth=1), base + 1.0)
        torch.testing.assert_close(chain(x, depth=2), base + 3.0)
        torch.testing.assert_close(chain(x), base + 3.0)


class TestTrainPatch:
    def test_expert_hash_unchanged(self, patched_digits_cnn):
        run = patched_digits_cnn

        assert run.sha256_before == run.sha256_after
        assert run.report.expert_sha256_before == run.sha256_before
        assert run.report.expert_sha256_after == run.sha256_before
        assert sha256_state_dict(run.patched.expert.state_dict()) == run.sha256_before

    def test_raises_holdout_accuracy_on_new_data(self, patched_digits_cnn):
        report = patched_digits_cnn.report

        assert report.depth == 1
        assert report.train_samples + report.holdout_samples == 800
        assert report.accuracy_after > report.accuracy_before + 0.1

    def test_raises_accuracy_on_unseen_new_data(self, patched_digits_cnn, mnist_digits):
        patched = patched_digits_cnn.patched
        x = patched.inputs(mnist_digits.test)
        labels = mnist_digits.test["label"].to_numpy()

        before = accuracy_at_depth(patched.module, x, labels, depth=0)
        after = accuracy_at_depth(patched.module, x, labels, depth=1)

        assert after > before + 0.1, f"MNIST test accuracy {before:.3f} -> {after:.3f}"

    def test_depth_zero_still_serves_old_data(self, patched_digits_cnn, digits_cnn, uci_digits):
        x = digits_cnn.inputs(uci_digits.test)

        with torch.no_grad():
            assert torch.equal(patched_digits_cnn.patched.module(x, depth=0), digits_cnn.expert(x))

    def test_trains_conv_and_linear_deltas(self, patched_digits_cnn):
        patch = patched_digits_cnn.patched.patches[0]

        deltas = patch.deltas()

        for name in ("conv.0.weight", "conv.2.weight", "dense.1.weight", "output.weight", "output.bias"):
            assert deltas[name].abs().sum() > 0, name

    def test_adds_a_reference_for_the_new_depth(self, patched_digits_cnn, digits_cnn):
        patched = patched_digits_cnn.patched

        assert patched.depth == 1
        assert len(patched.references) == 2
        assert patched.references[0] is digits_cnn.references[0]
        assert digits_cnn.depth == 0
        assert len(digits_cnn.references) == 1

    def test_trains_mlp_expert(self, uci_digits, mnist_digits):
        settings = ExpertTraining(architecture="mlp", config={"hidden": [32], "dropout": 0.0}, epochs=10, lr=0.003)
        subgraph = train_expert(
            "vision/digits", uci_digits.train, uci_digits.holdout, settings, target_fpr=0.05, seed=1, min_tail_samples=4
        )
        before = sha256_state_dict(subgraph.expert.state_dict())

        patched, report = train_patch(
            subgraph,
            mnist_digits.train,
            Patch(rank=4, alpha=8.0, epochs=15, lr=0.003, default_min_samples=10),
            target_fpr=0.05,
            seed=1,
            min_tail_samples=4,
        )

        assert sha256_state_dict(subgraph.expert.state_dict()) == before
        assert report.accuracy_after > report.accuracy_before + 0.05
        assert patched.patches[0].deltas()["body.0.weight"].abs().sum() > 0

    # min_tail_samples=4 at target_fpr=0.05 needs 80 held-out rows, which a 0.2 held-out
    # fraction reaches by 400 rows (398 after rounding). The below-10 check and the held-out check both name 400.
    @pytest.mark.parametrize("rows", [3, 9, 10, 397])
    def test_too_few_rows_name_the_minimum(self, digits_cnn, mnist_digits, rows):
        with pytest.raises(EmptyDataError) as raised:
            train_patch(
                digits_cnn,
                mnist_digits.train.iloc[:rows],
                Patch(rank=4, alpha=8.0, epochs=1, lr=0.003, default_min_samples=10),
                target_fpr=0.05,
                seed=0,
                min_tail_samples=4,
            )

        message = str(raised.value)
        assert f"got {rows} rows" in message
        assert "at least 400 labelled rows" in message
        assert "80 held-out rows" in message

    def test_ten_row_floor_message(self, digits_cnn, mnist_digits):
        # target_fpr=0.5 with 1 tail sample needs 2 held-out rows, so the floor of 10 rows decides.
        with pytest.raises(EmptyDataError, match=r"got 9 rows; collect at least 10 labelled rows\.$"):
            train_patch(
                digits_cnn,
                mnist_digits.train.iloc[:9],
                Patch(rank=4, alpha=8.0, epochs=1, lr=0.003, default_min_samples=10),
                target_fpr=0.5,
                seed=0,
                min_tail_samples=1,
            )


def test_labels_outside_classes_rejected(digits_cnn, mnist_digits):
    frame = mnist_digits.train.iloc[:50].copy()
    frame.loc[frame.index[:3], "label"] = 99

    with pytest.raises(DataValidationError, match="outside the expert's classes 0..9"):
        train_patch(digits_cnn, frame, Patch(rank=2, alpha=4.0, epochs=1, lr=0.003, default_min_samples=10),
                    target_fpr=0.05, seed=0, min_tail_samples=4)
