"""Layers: CoordGate (the core), CoordConv, and the baselines' special layers (PAFU)."""

from .coordconv import CoordConv
from .coordgate import GATE_ACTIVATIONS, GATES, CoordGate, GateMLP
from .pafu import PAFU

__all__ = ["CoordGate", "GateMLP", "CoordConv", "PAFU", "GATES", "GATE_ACTIVATIONS"]
