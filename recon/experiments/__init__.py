"""The papers' experiments, each one resumable command (``recon experiment NAME``) that writes a results table
(markdown + CSV), the paper's figure and a verdict on each of the paper's claims.

=============  ===========================================================================================
``conv1d``     CoordGate paper (arXiv 2401.04680) Sec. IV.A, Fig. 3: learning a 1-D spatially-varying blur H
``sad``        PAFU paper (Kokkinos et al.): the Spatially Adaptive Dataset (dilate black pixels to 5x5)
``deblur2d``   CoordGate paper Sec. IV.B, Fig. 4b, Fig. 5 and the SSIM table: microscope deblurring
=============  ===========================================================================================

Each module exposes ``run(out, *, quick=False, overwrite=False, progress=True, **options) -> ExperimentResult``
and ``add_arguments(parser)`` for its own options.
"""

from __future__ import annotations

import importlib

from .common import Claim, ExperimentDir, claims_markdown, mean_spread, write_table

EXPERIMENTS = {
    "conv1d": "CoordGate Sec. IV.A / Fig. 3: a 1-D spatially-varying blur, CNN vs cCNN vs CoordGate",
    "sad": "PAFU's Spatially Adaptive Dataset: FCNN vs residual FCNN vs PAFU vs CoordGate",
    "deblur2d": "CoordGate Sec. IV.B / Fig. 4b, 5: microscope deblurring, U-Nets vs CoordGate vs Wiener",
}

__all__ = ["EXPERIMENTS", "experiment_module", "ExperimentDir", "Claim", "claims_markdown", "write_table",
           "mean_spread"]


def experiment_module(name: str):
    """The module of experiment ``name`` (imported on demand: each pulls its own dependencies)."""
    if name not in EXPERIMENTS:
        from ..errors import ReconError

        raise ReconError(f"experiment {name!r}: expected one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{name}")
