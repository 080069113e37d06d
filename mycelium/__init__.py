"""Mycelium: keep many specialised PyTorch experts useful as data changes.

A meta controller routes inputs to domain experts, patch networks absorb drift beside frozen
experts, idle experts move to quantized cold storage and come back through validation gates.
"""

__version__ = "0.1.0"
