"""Layers: CoordGate (the core), CoordConv, and the baselines' special layers (MultiWiener)."""

from .coordconv import CoordConv
from .coordgate import GATE_ACTIVATIONS, GATES, CoordGate, GateMLP
from .wiener import MultiWiener

__all__ = ["CoordGate", "GateMLP", "CoordConv", "MultiWiener", "GATES", "GATE_ACTIVATIONS"]
