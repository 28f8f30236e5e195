"""Layers: CoordGate (the core), CoordConv, and the baselines' special layers (MultiWiener, PAFU)."""

from .coordconv import CoordConv
from .coordgate import GATE_ACTIVATIONS, GATES, CoordGate, GateMLP
from .pafu import PAFU
from .wiener import MultiWiener

__all__ = ["CoordGate", "GateMLP", "CoordConv", "MultiWiener", "PAFU", "GATES", "GATE_ACTIVATIONS"]
