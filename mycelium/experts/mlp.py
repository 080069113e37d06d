"""Multi-layer perceptron expert for tabular domains."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mycelium.errors import ConfigError
from mycelium.experts.base import Expert, register_expert


@register_expert("mlp")
class MLPExpert(Expert):
    """ReLU MLP. Config: ``in_features``, ``hidden`` (list of widths), ``n_classes``, ``dropout``."""

    config_keys = frozenset({"in_features", "hidden", "n_classes", "dropout"})

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        hidden = list(config.get("hidden", [64, 64]))
        if not hidden or any(int(width) < 1 for width in hidden):
            raise ConfigError(f"mlp 'hidden' must list positive widths, got {hidden!r}.")
        widths = [int(config["in_features"]), *map(int, hidden)]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(float(config.get("dropout", 0.1)))]
        self.body = nn.Sequential(*layers)
        self.output = nn.Linear(widths[-1], int(config["n_classes"]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)
