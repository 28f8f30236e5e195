"""PAFU-UNet(d): the plain :class:`~recon.models.unet.UNet` with a :class:`~recon.layers.PAFU` as its input
convolution (the first 3 x 3 conv of the first encoder block, ``enc[0].body.c1``), every width unchanged.

A content-adaptive baseline (Kokkinos et al., arXiv 1911.10581, who use PAFU as a drop-in replacement of
convolutions): it is **not** position-aware, ``coords`` is accepted and ignored, so it isolates what
per-pixel, content-based kernel selection buys against CoordGate's position-based gating.

Halo: the PAFU's reach (``max(3, scorer_kernel) // 2``, 1 at the defaults, the same as the 3 x 3 conv it
replaces) enters the interval propagation at level 0 (:func:`recon.models.unet.unet_input_interval`'s
``input_reach``), so a larger scorer kernel grows :attr:`halo` accordingly.

The trainer adds ``weight * model.decorrelation_loss()`` (PAFU's kernel-decorrelation regulariser) to its loss.
"""

from __future__ import annotations

import torch

from ..layers import PAFU
from .unet import UNet

__all__ = ["PAFUUNet"]


class PAFUUNet(UNet):
    """``model(x (B, in_channels, H, W), coords=None) -> (B, out_channels, H, W)``.

    Parameters
    ----------
    depth, in_channels, out_channels, base_channels :
        As :class:`~recon.models.unet.UNet` (``variant="plain"``).
    n_kernels, tau, scorer_hidden, scorer_kernel :
        The input PAFU (:class:`recon.layers.PAFU`, kernel size 3 like the conv it replaces).
    """

    def __init__(self, depth: int = 3, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, *,
                 n_kernels: int = 4, tau: float = 1.0, scorer_hidden: int = 16, scorer_kernel: int = 3,
                 residual: bool = False):
        super().__init__(depth, in_channels, out_channels, base_channels, variant="plain", residual=residual)
        self.enc[0].body.c1 = PAFU(in_channels, self.channels[0], 3, n_kernels, tau=tau,
                                   scorer_hidden=scorer_hidden, scorer_kernel=scorer_kernel)

    @property
    def pafu(self) -> PAFU:
        return self.enc[0].body.c1

    @property
    def input_reach(self) -> int:  # read by UNet.halo
        return self.pafu.reach

    def decorrelation_loss(self) -> torch.Tensor:
        """The PAFU's ``||W W^T - I||_F^2`` (see :meth:`recon.layers.PAFU.decorrelation_loss`)."""
        return self.pafu.decorrelation_loss()
