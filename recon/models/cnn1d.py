"""1-D models of the CoordGate paper's spatially-varying convolution experiment (arXiv 2401.04680, Sec. IV.A):
``CNN(L, k, c)``, ``cCNN(L, k, c)`` (CoordConv: coordinates concatenated before every convolution) and
``CG(L, k, c, p)`` (CoordGate layers), all called as ``model(x (B, 1, n), coords (B, 1, n))``.

``L`` convolution layers of kernel ``k`` (odd, same padding) and ``c`` channels with ReLU between them, the
last layer producing 1 channel. In ``CG`` every layer but the last is a :class:`~recon.layers.CoordGate`
whose gate MLP has ``p`` 1 x 1 layers of ``c`` units.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coords import check_coords
from ..errors import ReconError
from ..layers import CoordConv, CoordGate

__all__ = ["CNN1d", "CoordConvCNN1d", "CoordGateCNN1d"]


def _check(L, k, c):
    if isinstance(L, bool) or int(L) != L or not 1 <= L <= 64:
        raise ReconError(f"L = {L!r}: expected a whole number of layers in 1..64")
    if isinstance(k, bool) or int(k) != k or k < 1 or k % 2 == 0:
        raise ReconError(f"k = {k!r}: expected an odd kernel size >= 1")
    if isinstance(c, bool) or int(c) != c or c < 1:
        raise ReconError(f"c = {c!r}: expected a whole number of channels >= 1")


class _Base(nn.Module):
    position_aware = True

    def __init__(self, L: int, k: int):
        super().__init__()
        self.L, self.k = int(L), int(k)

    @property
    def halo(self) -> int:
        """One-sided reach in samples: ``L (k - 1) / 2``."""
        return self.L * (self.k - 1) // 2

    @property
    def receptive_field(self) -> int:
        return 2 * self.halo + 1

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise ReconError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, C, L)")


class CNN1d(_Base):
    """``CNN(L, k, c)``: plain convolutions (coords accepted and ignored)."""

    position_aware = False

    def __init__(self, L: int = 3, k: int = 5, c: int = 16, in_channels: int = 1):
        _check(L, k, c)
        super().__init__(L, k)
        widths = [in_channels] + [c] * (L - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, k, padding=k // 2) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x, coords=None):
        self._check_x(x)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x


class CoordConvCNN1d(_Base):
    """``cCNN(L, k, c)``: the coordinate channel concatenated before every convolution."""

    def __init__(self, L: int = 3, k: int = 5, c: int = 16, in_channels: int = 1):
        _check(L, k, c)
        super().__init__(L, k)
        widths = [in_channels] + [c] * (L - 1) + [1]
        self.convs = nn.ModuleList(CoordConv(a, b, k, dims=1) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x, coords):
        self._check_x(x)
        coords = check_coords(x, coords)
        for i, conv in enumerate(self.convs):
            x = conv(x, coords)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x


class CoordGateCNN1d(_Base):
    """``CG(L, k, c, p)``: ``L - 1`` CoordGate layers (kernel ``k``, ``c`` channels, gate MLP of ``p`` layers),
    then a plain convolution to 1 channel."""

    def __init__(self, L: int = 3, k: int = 5, c: int = 16, p: int = 2, in_channels: int = 1, *, gate: str = "mlp",
                 fourier: int = 0, gate_activation: str = "none"):
        _check(L, k, c)
        super().__init__(L, k)
        self.p = p
        widths = [in_channels] + [c] * (L - 1)
        self.gated = nn.ModuleList(CoordGate(a, b, k, gate_layers=p, gate=gate, fourier=fourier,
                                             gate_activation=gate_activation, dims=1)
                                   for a, b in zip(widths[:-1], widths[1:]))
        self.last = nn.Conv1d(widths[-1], 1, k, padding=k // 2)

    def forward(self, x, coords):
        self._check_x(x)
        coords = check_coords(x, coords)
        for layer in self.gated:
            x = F.relu(layer(x, coords))
        return self.last(x)
