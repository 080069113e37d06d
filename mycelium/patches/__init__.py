"""Patch networks: trainable low-rank deltas beside a frozen expert, chained per domain."""

from mycelium.patches.chain import PatchedExpert
from mycelium.patches.lowrank import LowRankPatch

__all__ = ["LowRankPatch", "PatchedExpert"]
