"""recon: PyTorch models and training for spatially-varying deblurring (CoordGate and baselines).

This package is built on ``psfsim`` (it may import psfsim, never the other way round). Its models and
trainer arrive with the recon issues; today it provides the command-line entry point and an environment
report (``recon env``).
"""

from psfsim._version import __version__

__all__ = ["__version__"]
