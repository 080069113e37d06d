"""Domain experts: ordinary torch modules of several architectures, built by name from config."""

from mycelium.experts import cnn, mlp  # noqa: F401  (registers the architectures)
from mycelium.experts.base import EXPERT_ARCHITECTURES, Expert, ExpertSpec, InputSchema, build_expert, register_expert

__all__ = ["EXPERT_ARCHITECTURES", "Expert", "ExpertSpec", "InputSchema", "build_expert", "register_expert"]
