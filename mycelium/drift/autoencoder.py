"""Autoencoder reconstruction error as a new-domain (OOD) score on raw inputs.

A small autoencoder is trained on one domain's inputs. Inputs like the training data are
reconstructed well, and inputs of another domain, or noise, are not. The score works on the raw
inputs, so it catches inputs that an expert's feature space maps close to its own data. On the
UCI digits, the Mahalanobis check on a small CNN's penultimate features accepted 44% of
uniform-noise images at a 5% target false-positive rate, and the reconstruction error accepted
none (benchmarks/detection.py, reports/benchmarks/detection.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mycelium.drift.ood import _as_features
from mycelium.drift.calibration import require_holdout_rows, threshold_at_fpr
from mycelium.errors import ConfigError

_SCALINGS = ("per_feature", "global", "none")
# Below this many parameters one CPU thread trains faster than several, because thread start-up
# costs more than the small matrix products it parallelises (mycelium/experts/training.py measured
# 4 ms against 150 ms per step for the digits CNN on 2 cores).
_SINGLE_THREAD_MAX_PARAMETERS = 1_000_000


class AutoencoderOOD:
    """Mean squared reconstruction error of a small MLP autoencoder, calibrated to a target FPR.

    The encoder has the layer widths ``hidden`` and then ``bottleneck``, and the decoder mirrors it.
    Layers are linear with ReLU between them and a linear output. Inputs are standardized
    before encoding, and the score of a row is the mean over features of the squared error in
    standardized units. As in `MahalanobisOOD`, the threshold is the (1 - target_fpr) quantile
    of the scores of held-out in-domain rows.

    Training runs on the CPU with a seeded initialisation and batch order, so the same data and
    settings give the same weights on the same machine and torch version.

    Parameters
    ----------
    hidden
        Widths of the encoder's hidden layers, outermost first.
    bottleneck
        Width of the code layer. It must be smaller than the number of features, or the
        autoencoder could learn the identity.
    epochs, lr, batch_size, weight_decay
        Adam training settings.
    scaling
        "per_feature" standardizes each feature, for tables. "global" uses one mean and one
        standard deviation for all features, for images, where a pixel that is nearly always 0
        would otherwise get a tiny scale. "none" uses the inputs as given, for inputs that are
        already normalised.
    seed
        Seed of the weight initialisation and of the batch order.
    min_tail_samples
        Minimum expected number of held-out rows above the threshold. The holdout must have at
        least ``min_tail_samples / target_fpr`` rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> basis = rng.normal(size=(2, 8))
    >>> def sample(n):
    ...     return rng.normal(size=(n, 2)) @ basis + 0.05 * rng.normal(size=(n, 8))
    >>> ood = AutoencoderOOD(hidden=(16,), bottleneck=2, epochs=60).fit(sample(500), sample(400), target_fpr=0.05)
    >>> ood.accepts(np.vstack([sample(1), rng.normal(size=(1, 8)) * 3])).tolist()
    [True, False]
    """

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (64,),
        bottleneck: int = 16,
        epochs: int = 100,
        lr: float = 2e-3,
        batch_size: int = 64,
        weight_decay: float = 0.0,
        scaling: Literal["per_feature", "global", "none"] = "per_feature",
        seed: int = 0,
        min_tail_samples: int = 10,
    ) -> None:
        hidden = tuple(hidden)
        for name, value in [("bottleneck", bottleneck), ("epochs", epochs), ("batch_size", batch_size),
                            ("min_tail_samples", min_tail_samples)]:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.")
        if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1 for w in hidden):
            raise ConfigError(f"hidden must list integer widths >= 1, got {hidden!r}.")
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {lr!r}.")
        if not math.isfinite(weight_decay) or weight_decay < 0:
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}.")
        if scaling not in _SCALINGS:
            raise ConfigError(f"scaling must be one of {_SCALINGS}, got {scaling!r}.")
        self.hidden = tuple(int(width) for width in hidden)
        self.bottleneck = int(bottleneck)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.scaling = scaling
        self.seed = int(seed)
        self.min_tail_samples = int(min_tail_samples)
        self.module: nn.Sequential | None = None
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.threshold: float | None = None
        self.target_fpr: float | None = None
        self.calibrated_fpr: float | None = None
        self.final_loss: float | None = None
        self.n_train: int | None = None
        self.n_holdout: int | None = None

    @property
    def n_features(self) -> int | None:
        """Number of input features, or None before `fit`."""
        return None if self.mean is None else int(self.mean.shape[0])

    def fit(self, train_inputs: Any, holdout_inputs: Any, *, target_fpr: float) -> AutoencoderOOD:
        """Train the autoencoder on in-domain rows and calibrate the threshold on held-out ones.

        Parameters
        ----------
        train_inputs
            In-domain rows, shape (n_rows, n_features), numpy or torch.
        holdout_inputs
            Other in-domain rows, not used for training, with the same features.
        target_fpr
            Fraction of in-domain inputs that may be rejected, in (0, 1).

        Raises
        ------
        ConfigError
            If target_fpr is outside (0, 1), the holdout is too small for it, or the bottleneck
            is not narrower than the inputs.
        ValueError
            If the inputs are not 2-D, have different widths, or contain NaN or infinity.
        """
        if not 0 < target_fpr < 1:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}.")
        train = _as_features(train_inputs, "train_inputs")
        holdout = _as_features(holdout_inputs, "holdout_inputs", n_features=train.shape[1])
        if self.bottleneck >= train.shape[1]:
            raise ConfigError(
                f"bottleneck={self.bottleneck} must be smaller than the {train.shape[1]} input features, "
                "or the autoencoder can copy its input; pass a smaller bottleneck."
            )
        if train.shape[0] < 2:
            raise ValueError(f"train_inputs has {train.shape[0]} rows, but training needs at least 2.")
        require_holdout_rows(holdout.shape[0], target_fpr, self.min_tail_samples, name="holdout_inputs")

        self.mean, self.scale = _standardization(train, self.scaling)
        self.module = _build_module(train.shape[1], self.hidden, self.bottleneck, seed=self.seed)
        self.final_loss = self._train(self._standardize(train))
        holdout_scores = self.score(holdout)
        self.threshold, self.calibrated_fpr = threshold_at_fpr(holdout_scores, target_fpr)
        self.target_fpr = float(target_fpr)
        self.n_train = int(train.shape[0])
        self.n_holdout = int(holdout.shape[0])
        return self

    def _standardize(self, inputs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((inputs - self.mean) / self.scale, dtype=torch.float32)

    def _train(self, inputs: torch.Tensor) -> float:
        """Train with Adam on the mean squared error and return the last epoch's mean loss."""
        assert self.module is not None
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.module.train()
        epoch_loss = math.nan
        with _cpu_threads(sum(p.numel() for p in self.module.parameters())):
            for _ in range(self.epochs):
                order = torch.randperm(len(inputs), generator=generator)
                total = 0.0
                for start in range(0, len(order), self.batch_size):
                    batch = inputs[order[start : start + self.batch_size]]
                    loss = torch.mean((self.module(batch) - batch) ** 2)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(batch)
                epoch_loss = total / len(inputs)
        self.module.eval()
        return epoch_loss

    def score(self, inputs: Any) -> np.ndarray:
        """Compute each row's mean squared reconstruction error. Higher means farther from the domain.

        Raises
        ------
        RuntimeError
            If the detector is not fitted.
        ValueError
            If the inputs have the wrong width or contain NaN or infinity.
        """
        if self.module is None or self.mean is None:
            raise RuntimeError("AutoencoderOOD is not fitted. Call fit() or from_tensors() first.")
        rows = _as_features(inputs, "inputs", n_features=self.n_features)
        standardized = self._standardize(rows)
        with torch.no_grad(), _cpu_threads(sum(p.numel() for p in self.module.parameters())):
            error = torch.mean((self.module(standardized) - standardized) ** 2, dim=1)
        return error.numpy().astype(np.float64)

    def accepts(self, inputs: Any) -> np.ndarray:
        """Return a boolean per row: True when the row's score is at most the threshold."""
        return self.score(inputs) <= self.threshold

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Return the weights (prefixed ``module.``) and the standardization, for safetensors."""
        if self.module is None or self.mean is None or self.scale is None:
            raise RuntimeError("AutoencoderOOD is not fitted, so there is no state to save. Call fit() first.")
        tensors = {f"module.{name}": value.detach().cpu().contiguous().clone() for name, value in self.module.state_dict().items()}
        tensors["mean"] = torch.from_numpy(self.mean.copy())
        tensors["scale"] = torch.from_numpy(self.scale.copy())
        return tensors

    def metadata(self) -> dict[str, Any]:
        """Return the JSON part of the state: architecture, training settings, threshold and FPRs."""
        if self.threshold is None:
            raise RuntimeError("AutoencoderOOD is not fitted, so there is no state to save. Call fit() first.")
        return {
            "n_features": self.n_features,
            "hidden": list(self.hidden),
            "bottleneck": self.bottleneck,
            "scaling": self.scaling,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "final_loss": self.final_loss,
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "calibrated_fpr": self.calibrated_fpr,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "min_tail_samples": self.min_tail_samples,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> AutoencoderOOD:
        """Rebuild a fitted detector from `to_tensors()` and `metadata()` output.

        Raises
        ------
        ValueError
            If a tensor is missing, unexpected or has the wrong shape for the metadata's
            architecture, or if a value is not finite.
        """
        detector = cls(
            hidden=tuple(metadata["hidden"]),
            bottleneck=int(metadata["bottleneck"]),
            epochs=int(metadata["epochs"]),
            lr=float(metadata["lr"]),
            batch_size=int(metadata["batch_size"]),
            weight_decay=float(metadata["weight_decay"]),
            scaling=metadata["scaling"],
            seed=int(metadata["seed"]),
            min_tail_samples=int(metadata.get("min_tail_samples", 10)),
        )
        n_features = int(metadata["n_features"])
        missing = sorted({"mean", "scale"} - set(tensors))
        if missing:
            raise ValueError(f"The tensors lack {missing}; pass the output of AutoencoderOOD.to_tensors().")
        mean = tensors["mean"].detach().cpu().to(torch.float64).numpy()
        scale = tensors["scale"].detach().cpu().to(torch.float64).numpy()
        if mean.shape != (n_features,) or scale.shape != (n_features,):
            raise ValueError(
                f"Tensor shapes mean {tuple(mean.shape)} and scale {tuple(scale.shape)} do not match "
                f"n_features={n_features} in the metadata; the state files belong to different fits."
            )
        weights = {name[len("module."):]: value for name, value in tensors.items() if name.startswith("module.")}
        module = _build_module(n_features, detector.hidden, detector.bottleneck, seed=detector.seed)
        expected = module.state_dict()
        if set(weights) != set(expected):
            raise ValueError(
                f"The autoencoder weights have keys {sorted(weights)} but hidden={list(detector.hidden)} and "
                f"bottleneck={detector.bottleneck} need {sorted(expected)}; the state files belong to different fits."
            )
        for name, value in weights.items():
            if tuple(value.shape) != tuple(expected[name].shape):
                raise ValueError(
                    f"Weight {name!r} has shape {tuple(value.shape)}, expected {tuple(expected[name].shape)} "
                    "for the metadata's architecture; the state files belong to different fits."
                )
        values = [mean, scale, *(w.detach().cpu().to(torch.float64).numpy() for w in weights.values())]
        if not all(np.all(np.isfinite(v)) for v in values):
            raise ValueError("A weight or standardization tensor contains NaN or infinity; refit the detector.")
        threshold = float(metadata["threshold"])
        if not math.isfinite(threshold):
            raise ValueError(f"The metadata threshold {threshold!r} is not finite; refit the detector.")

        module.load_state_dict({name: value.to(torch.float32) for name, value in weights.items()})
        module.eval()
        detector.module = module
        detector.mean = mean
        detector.scale = scale
        detector.threshold = threshold
        detector.target_fpr = metadata.get("target_fpr")
        detector.calibrated_fpr = metadata.get("calibrated_fpr")
        detector.final_loss = metadata.get("final_loss")
        detector.n_train = metadata.get("n_train")
        detector.n_holdout = metadata.get("n_holdout")
        return detector


def _build_module(n_features: int, hidden: tuple[int, ...], bottleneck: int, *, seed: int) -> nn.Sequential:
    widths = [n_features, *hidden, bottleneck, *reversed(hidden), n_features]
    layers: list[nn.Module] = []
    # fork_rng restores torch's global generator afterwards, so seeding here changes no other code's draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    # No ReLU after the output layer: standardized inputs are negative as often as positive.
    return nn.Sequential(*layers[:-1])


def _standardization(train: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and scale subtracted from and divided into every row."""
    n_features = train.shape[1]
    if scaling == "none":
        return np.zeros(n_features), np.ones(n_features)
    if scaling == "global":
        mean, scale = np.full(n_features, train.mean()), np.full(n_features, train.std())
    else:
        mean, scale = train.mean(axis=0), train.std(axis=0)
    # A constant feature (or an all-constant input) keeps scale 1, so its values stay finite.
    return mean, np.where(scale < 1e-8, 1.0, scale)


@contextmanager
def _cpu_threads(n_parameters: int) -> Iterator[None]:
    """Run small models on one CPU thread, and leave larger ones to torch's thread pool."""
    if n_parameters > _SINGLE_THREAD_MAX_PARAMETERS:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
