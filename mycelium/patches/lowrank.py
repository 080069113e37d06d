"""Low-rank patch: trainable deltas beside every weight of a frozen expert."""

from __future__ import annotations

import math

import torch
from torch import nn

from mycelium.errors import ConfigError


def _key(parameter_name: str) -> str:
    # nn.ParameterDict keys cannot contain dots.
    return parameter_name.replace(".", "__")


class LowRankPatch(nn.Module):
    """Low-rank deltas (B @ A, scaled by alpha / rank) for every weight matrix or kernel of an
    expert, and a full delta for every bias.

    ``B`` starts at zero, so a fresh patch leaves the expert's output unchanged. Convolution
    kernels are treated as matrices of shape (out_channels, in_channels * kernel size).
    """

    def __init__(self, expert: nn.Module, *, rank: int = 4, alpha: float = 8.0, seed: int = 0):
        super().__init__()
        if rank < 1:
            raise ConfigError(f"Patch rank must be at least 1, got {rank}.")
        generator = torch.Generator().manual_seed(seed)
        self.rank = rank
        self.alpha = alpha
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        for name, weight in expert.named_parameters():
            self.shapes[name] = tuple(weight.shape)
            if weight.ndim >= 2:
                fan_in = weight[0].numel()
                effective = min(rank, weight.shape[0], fan_in)
                down = torch.randn(effective, fan_in, generator=generator) / math.sqrt(fan_in)
                self.down[_key(name)] = nn.Parameter(down)
                self.up[_key(name)] = nn.Parameter(torch.zeros(weight.shape[0], effective))
            else:
                self.bias[_key(name)] = nn.Parameter(torch.zeros_like(weight))

    def deltas(self) -> dict[str, torch.Tensor]:
        """Return the additive change for each expert parameter, keyed by its name."""
        result = {}
        for name, shape in self.shapes.items():
            key = _key(name)
            if key in self.up:
                up, down = self.up[key], self.down[key]
                result[name] = ((up @ down) * (self.alpha / down.shape[0])).reshape(shape)
            else:
                result[name] = self.bias[key]
        return result

    def describe(self) -> dict:
        """Return the settings needed to rebuild this patch around the same expert."""
        return {"type": "lowrank", "rank": self.rank, "alpha": self.alpha}
