"""The contract every registered expert architecture meets, and the input schema."""

import numpy as np
import pytest
import safetensors.torch
import torch

from mycelium.errors import ConfigError
from mycelium.experts import EXPERT_ARCHITECTURES, Expert, InputSchema, build_expert, register_expert
from mycelium.experts.training import accuracy, fit, predict_logits
from mycelium.hashing import sha256_state_dict

N_FEATURES = 64
N_CLASSES = 3
# Image and table experts take what they read from these: 64 columns are one 1x8x8 image.
BASE_CONFIG = {"in_features": N_FEATURES, "image_shape": [1, 8, 8], "n_classes": N_CLASSES}
# Small widths per architecture, to keep training fast. A new architecture that needs more
# than BASE_CONFIG gets its entry here.
SMALL_CONFIG = {
    "mlp": {"hidden": [16], "dropout": 0.0},
    "cnn": {"channels": [4, 8], "hidden": 16, "dropout": 0.0},
}
# (architecture, invalid config entries, phrase the error must contain)
INVALID_CONFIGS = [
    ("mlp", {"hidden": []}, "'hidden' must list positive widths"),
    ("mlp", {"hidden": [8, 0]}, "'hidden' must list positive widths"),
    ("cnn", {"image_shape": [8, 8]}, "'image_shape' must be (channels, height, width)"),
    ("cnn", {"image_shape": [0, 8, 8]}, "'image_shape' must be (channels, height, width)"),
    ("mlp", {"hiden": [8]}, "Unknown setting(s) ['hiden']"),
    ("cnn", {"chanels": [4, 8]}, "Unknown setting(s) ['chanels']"),
]
ARCHITECTURES = sorted(EXPERT_ARCHITECTURES)


def minimal_config(architecture: str) -> dict:
    config = {**BASE_CONFIG, **SMALL_CONFIG.get(architecture, {})}
    return {key: value for key, value in config.items() if key in EXPERT_ARCHITECTURES[architecture].config_keys}


def build(architecture: str, seed: int = 0) -> Expert:
    torch.manual_seed(seed)
    return build_expert(architecture, minimal_config(architecture)).eval()


def separable_problem(n_rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three unit-variance Gaussian classes whose centres are +0.75 or -0.75 in each feature, at random."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_rows) % N_CLASSES
    centres = torch.randn(N_CLASSES, N_FEATURES, generator=generator).sign() * 0.75
    features = centres[labels] + torch.randn(n_rows, N_FEATURES, generator=generator)
    return features, labels


def test_registry_has_mlp_and_cnn():
    assert {"mlp", "cnn"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
class TestExpertContract:
    def test_builds_as_registered_class(self, architecture):
        expert = build(architecture)

        assert isinstance(expert, EXPERT_ARCHITECTURES[architecture])
        assert isinstance(expert, Expert)
        assert expert.architecture == architecture
        assert expert.n_classes == N_CLASSES

    def test_forward_gives_one_logit_row_per_input(self, architecture):
        expert = build(architecture)

        logits = expert(torch.randn(5, N_FEATURES))

        assert logits.shape == (5, N_CLASSES)
        assert logits.dtype == torch.float32

    def test_features_are_two_dimensional(self, architecture):
        expert = build(architecture)
        x = torch.randn(5, N_FEATURES)

        hidden = expert.features(x)

        assert hidden.ndim == 2
        assert hidden.shape[0] == 5
        torch.testing.assert_close(expert.head(hidden), expert(x))

    def test_forward_handles_one_row(self, architecture):
        assert build(architecture)(torch.randn(1, N_FEATURES)).shape == (1, N_CLASSES)

    def test_trains_above_chance(self, architecture):
        features, labels = separable_problem(240, seed=1)
        test_features, test_labels = separable_problem(120, seed=1)
        expert = build(architecture)

        result = fit(expert, features, labels, epochs=15, lr=0.01, batch_size=32, seed=0)
        score = accuracy(predict_logits(expert, test_features).argmax(1), test_labels)

        assert result.samples == 240
        assert np.isfinite(result.final_loss)
        assert score > 0.9, f"accuracy {score:.3f}; chance is {1 / N_CLASSES:.3f}"

    def test_state_dict_round_trips_through_safetensors(self, architecture):
        trained = build(architecture, seed=1)
        data = safetensors.torch.save(trained.state_dict())
        fresh = build(architecture, seed=2)
        assert sha256_state_dict(fresh.state_dict()) != sha256_state_dict(trained.state_dict())

        fresh.load_state_dict(safetensors.torch.load(data))

        x = torch.randn(7, N_FEATURES)
        assert sha256_state_dict(fresh.state_dict()) == sha256_state_dict(trained.state_dict())
        assert torch.equal(fresh.eval()(x), trained(x))

    def test_config_is_kept(self, architecture):
        config = minimal_config(architecture)

        expert = build_expert(architecture, config)

        assert expert.config == config
        assert expert.config is not config


@pytest.mark.parametrize(
    "architecture",
    ARCHITECTURES,
)
def test_wrong_input_width_raises(architecture):
    expert = build(architecture)

    with pytest.raises((RuntimeError, ValueError)):
        expert(torch.randn(4, 2 * N_FEATURES))


@pytest.mark.parametrize(("architecture", "entries", "phrase"), INVALID_CONFIGS)
def test_invalid_config_raises_config_error(architecture, entries, phrase):
    with pytest.raises(ConfigError) as raised:
        build_expert(architecture, {**minimal_config(architecture), **entries})

    assert phrase in str(raised.value)


def test_unknown_architecture_names_known_ones():
    with pytest.raises(ConfigError) as raised:
        build_expert("transformer-xl", BASE_CONFIG)

    message = str(raised.value)
    assert "'transformer-xl'" in message
    for architecture in ARCHITECTURES:
        assert repr(architecture) in message


def test_duplicate_registration_rejected():
    with pytest.raises(ConfigError, match="'mlp' is already registered"):

        @register_expert("mlp")
        class AnotherMLP(Expert):
            pass

    assert EXPERT_ARCHITECTURES["mlp"].__name__ != "AnotherMLP"


class TestInputSchema:
    def test_per_feature_normalisation(self):
        features = np.array([[0.0, 10.0], [2.0, 30.0]])

        schema = InputSchema.fit(["a", "b"], features)

        assert schema.mean == (1.0, 20.0)
        assert schema.std == (1.0, 10.0)
        assert schema.transform(features).tolist() == [[-1.0, -1.0], [1.0, 1.0]]

    def test_global_normalisation_shares_one_scale(self):
        features = np.array([[0.0, 4.0], [4.0, 8.0]])

        schema = InputSchema.fit(["a", "b"], features, per_feature=False)

        assert schema.mean == (4.0, 4.0)
        assert schema.std == (np.sqrt(8.0), np.sqrt(8.0))

    def test_constant_column_stays_finite(self):
        schema = InputSchema.fit(["a", "b"], np.array([[5.0, 1.0], [5.0, 3.0]]))

        assert schema.std[0] == 1.0
        assert torch.isfinite(schema.transform(np.array([[5.0, 2.0]]))).all()

    def test_column_count_mismatch_raises(self):
        with pytest.raises(ConfigError, match=r"shape \(2, 3\).*2 columns"):
            InputSchema.fit(["a", "b"], np.zeros((2, 3)))

    def test_round_trips_through_dict(self):
        schema = InputSchema.fit(["a", "b"], np.array([[0.0, 1.0], [2.0, 5.0]]), image_shape=(1, 1, 2))

        assert InputSchema.from_dict(schema.to_dict()) == schema

    def test_matches_columns_in_any_order(self):
        schema = InputSchema.fit(["a", "b"], np.zeros((2, 2)))

        assert schema.matches(["b", "a"])
        assert not schema.matches(["a"])
        assert not schema.matches(["a", "b", "c"])
