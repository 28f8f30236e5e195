"""CoordConv (Liu et al. 2018, "An intriguing failing of convolutional neural networks and the CoordConv
solution", arXiv 1807.03247): a convolution that sees the coordinates of its pixels as extra input channels.

Here the coordinates are the field coordinates of the lens (:mod:`recon.coords`), not a per-crop ``linspace``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..coords import check_coords
from .coordgate import _conv

__all__ = ["CoordConv"]


class CoordConv(nn.Module):
    """``conv(cat(x, coords))``: ``x (B, C, *S)``, ``coords (B, dims, *S)`` -> ``(B, out_channels, *S)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dims: int = 2):
        super().__init__()
        self.dims = dims
        self.conv = _conv(dims)(in_channels + dims, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        coords = check_coords(x, coords)
        return self.conv(torch.cat([x, coords.to(x.dtype)], dim=1))
