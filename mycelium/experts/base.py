"""The contract every expert architecture follows, and the registry that builds them by name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from mycelium.errors import ConfigError


@dataclass(frozen=True)
class InputSchema:
    """Columns an expert reads, and the normalisation learnt from its training data.

    ``mean`` and ``std`` have one entry per column. ``image_shape`` is set for image experts,
    whose flat columns are reshaped to (channels, height, width).
    """

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int] | None = None

    @classmethod
    def fit(
        cls,
        columns: list[str],
        features: np.ndarray,
        *,
        per_feature: bool = True,
        image_shape: tuple[int, int, int] | None = None,
    ) -> "InputSchema":
        """Learn the normalisation from training features (rows x columns)."""
        if features.ndim != 2 or features.shape[1] != len(columns):
            raise ConfigError(
                f"Training features have shape {features.shape} but the schema names "
                f"{len(columns)} columns; pass one column name per feature."
            )
        if per_feature:
            mean = features.mean(axis=0)
            std = features.std(axis=0)
        else:
            mean = np.full(features.shape[1], features.mean())
            std = np.full(features.shape[1], features.std())
        # A constant column would divide by zero; leaving it unscaled keeps it finite.
        std = np.where(std < 1e-8, 1.0, std)
        return cls(
            tuple(columns),
            tuple(float(v) for v in mean),
            tuple(float(v) for v in std),
            image_shape,
        )

    def transform(self, features: np.ndarray) -> torch.Tensor:
        """Normalise raw features (rows x columns) into a float32 tensor."""
        scaled = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return torch.as_tensor(scaled, dtype=torch.float32)

    def matches(self, columns: list[str] | tuple[str, ...]) -> bool:
        """Return True when ``columns`` are exactly this schema's columns, in any order."""
        return set(columns) == set(self.columns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSchema":
        shape = data.get("image_shape")
        return cls(
            tuple(data["columns"]),
            tuple(data["mean"]),
            tuple(data["std"]),
            tuple(shape) if shape else None,
        )


class Expert(nn.Module):
    """A domain expert: ``features`` gives the penultimate representation, ``head`` the logits.

    Drift and out-of-distribution scores read ``features``; patches add low-rank deltas to the
    weights, so an architecture needs nothing special to be patchable.
    """

    architecture: ClassVar[str]
    # Settings the architecture reads; build_expert rejects any other key, so a typo such as
    # "hiden" fails instead of silently falling back to the default.
    config_keys: ClassVar[frozenset[str]] = frozenset({"in_features", "n_classes"})

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def n_classes(self) -> int:
        return int(self.config["n_classes"])


@dataclass
class ExpertSpec:
    """An architecture name with its constructor settings, as read from params.yaml."""

    architecture: str
    config: dict[str, Any] = field(default_factory=dict)


EXPERT_ARCHITECTURES: dict[str, type[Expert]] = {}


def register_expert(name: str) -> Callable[[type[Expert]], type[Expert]]:
    """Register an Expert subclass under ``name`` so configs can ask for it."""

    def decorator(cls: type[Expert]) -> type[Expert]:
        if name in EXPERT_ARCHITECTURES:
            raise ConfigError(f"Expert architecture {name!r} is already registered.")
        cls.architecture = name
        EXPERT_ARCHITECTURES[name] = cls
        return cls

    return decorator


def build_expert(architecture: str, config: dict[str, Any]) -> Expert:
    """Build an untrained expert of a registered architecture."""
    try:
        cls = EXPERT_ARCHITECTURES[architecture]
    except KeyError:
        raise ConfigError(
            f"Unknown expert architecture {architecture!r}; choose one of "
            f"{sorted(EXPERT_ARCHITECTURES)} or register a new one with @register_expert."
        ) from None
    unknown = sorted(set(config) - cls.config_keys)
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {unknown} for expert architecture {architecture!r}; "
            f"valid settings are {sorted(cls.config_keys)}."
        )
    return cls(config)
