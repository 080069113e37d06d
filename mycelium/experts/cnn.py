"""Small convolutional expert for image domains given as flat pixel columns."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mycelium.errors import ConfigError
from mycelium.experts.base import Expert, register_expert


@register_expert("cnn")
class SmallCNNExpert(Expert):
    """Two 3x3 convolutions, max pooling and a dense layer.

    Config: ``image_shape`` (channels, height, width), ``channels`` (two widths), ``hidden``,
    ``n_classes``, ``dropout``.
    """

    config_keys = frozenset({"in_features", "image_shape", "channels", "hidden", "n_classes", "dropout"})

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        shape = tuple(int(v) for v in config["image_shape"])
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"cnn 'image_shape' must be (channels, height, width), got {shape!r}.")
        self.image_shape = shape
        first, second = (int(c) for c in config.get("channels", [16, 32]))
        hidden = int(config.get("hidden", 64))
        self.conv = nn.Sequential(
            nn.Conv2d(shape[0], first, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = second * (shape[1] // 2) * (shape[2] // 2)
        self.dense = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(float(config.get("dropout", 0.1)))
        )
        self.output = nn.Linear(hidden, int(config["n_classes"]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        if x.ndim != 2 or x.shape[1] != expected:
            raise ValueError(
                f"cnn expert expects rows of {expected} pixels for image_shape {self.image_shape}, "
                f"got input of shape {tuple(x.shape)}; pass one flat image per row."
            )
        return self.dense(self.conv(x.reshape(x.shape[0], *self.image_shape)))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)
