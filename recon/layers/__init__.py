"""Layers: CoordGate (the core), CoordConv, and the baselines' special layers."""

from .coordconv import CoordConv
from .coordgate import GATE_ACTIVATIONS, GATES, CoordGate, GateMLP

__all__ = ["CoordGate", "GateMLP", "CoordConv", "GATES", "GATE_ACTIVATIONS"]
