"""An expert with its ordered chain of patches, served as one module."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from mycelium.experts.base import Expert
from mycelium.patches.lowrank import LowRankPatch


class _FeatureView(nn.Module):
    """Calls ``expert.features`` through ``forward`` so functional_call can reach it."""

    def __init__(self, expert: Expert):
        super().__init__()
        self.expert = expert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expert.features(x)


class PatchedExpert(nn.Module):
    """A frozen expert plus patches 1..depth applied in order; depth 0 is the bare expert.

    The expert's own parameters are never written: the patched weights exist only inside
    ``forward``, so training a patch leaves the expert bit-identical.
    """

    def __init__(self, expert: Expert, patches: list[LowRankPatch] | None = None):
        super().__init__()
        self.expert = expert
        self.patches = nn.ModuleList(patches or [])
        self.depth = len(self.patches)
        for parameter in self.expert.parameters():
            parameter.requires_grad_(False)

    def patched_parameters(self, depth: int) -> dict[str, torch.Tensor]:
        """Return the expert's parameters with the first ``depth`` patches added."""
        params = dict(self.expert.named_parameters())
        for patch in list(self.patches)[:depth]:
            for name, delta in patch.deltas().items():
                params[name] = params[name] + delta
        return params

    def forward(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        depth = self.depth if depth is None else depth
        if depth == 0:
            return self.expert(x)
        return functional_call(self.expert, self.patched_parameters(depth), (x,))

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        depth = self.depth if depth is None else depth
        if depth == 0:
            return self.expert.features(x)
        params = {f"expert.{name}": value for name, value in self.patched_parameters(depth).items()}
        return functional_call(_FeatureView(self.expert), params, (x,))
