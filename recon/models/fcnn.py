"""Small 2-D fully convolutional networks for the PAFU paper's Spatially Adaptive Dataset (Kokkinos et al.,
"Pixel Adaptive Filtering Units", arXiv 1911.10581; :mod:`recon.experiments.sad`), all called as
``model(x (B, in_channels, H, W), coords (B, 2, H, W) or None) -> (B, out_channels, H, W)``:

- ``FCNN(L, k, c)``: ``L`` same-padded ``k x k`` convolutions of ``c`` channels with ReLU between them (the last
  one linear); ``residual=True`` adds the input to the output (the residual FCNN: the identity is free, the
  network learns only the change);
- ``CG-FCNN(L, k, c, p)``: the same stack with every convolution but the last a
  :class:`~recon.layers.CoordGate` (its ``c`` channels gated per pixel by a ``p``-layer MLP of the field
  coordinates, arXiv 2401.04680 Eq. 3), the 2-D twin of :class:`~recon.models.cnn1d.CoordGateCNN1d`;
- ``PAFU-net``: one :class:`~recon.layers.PAFU` layer, ``n`` kernels of ``k x k`` chosen per pixel by its scoring
  CNN; the paper's minimal solution of the dataset is ``n = 2``, ``k = 5``: a Dirac kernel (keep the pixel) and
  a zero kernel (blacken it), selected by whether a black pixel lies in the 5 x 5 neighbourhood.

None pools or strides (``depth = 0``): any ``H x W`` works, and a crop with its own coordinates gives the crop
of the frame's output away from the borders (reach :attr:`halo`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coords import check_coords
from ..errors import ReconError
from ..layers import PAFU, CoordGate
from ..layers.pafu import _whole

__all__ = ["FCNN", "CoordGateFCNN", "PAFUNet"]


class _Base(nn.Module):
    depth = 0  # no pooling: any input size
    position_aware = False

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ReconError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, {self.in_channels}, H, W)")

    @property
    def halo(self) -> int:
        """One-sided reach in pixels: ``L (k - 1) / 2`` (``L`` same-padded ``k x k`` convolutions)."""
        return self.L * (self.k // 2)

    @property
    def receptive_field(self) -> int:
        return 2 * self.halo + 1

    @property
    def tile_align(self) -> int:
        """Read-origin alignment for tiled inference: 1 (no pooling or strides)."""
        return 1

    @property
    def tile_halo(self) -> int:
        """One-sided context for tiled inference, pixels: :attr:`halo` (exact)."""
        return self.halo

    def _residual_check(self, residual, in_channels, out_channels):
        if residual and in_channels < out_channels:
            raise ReconError(f"residual = True needs in_channels >= out_channels (got {in_channels} and {out_channels})")
        return bool(residual)


class FCNN(_Base):
    """``FCNN(L, k, c)``: plain ``k x k`` convolutions; ``coords`` accepted and ignored.

    Parameters
    ----------
    L : int
        Convolution layers (1..64).
    k : int
        Odd kernel size (same padding).
    c : int
        Hidden channels.
    in_channels, out_channels : int
    residual : bool
        Output ``x[:, :out_channels] + net(x)`` (the residual FCNN).
    """

    def __init__(self, L: int = 4, k: int = 3, c: int = 12, in_channels: int = 1, out_channels: int = 1, *,
                 residual: bool = False):
        super().__init__()
        self.L, self.k, self.c = _whole("L", L, 1, 64), _whole("k", k, 1, odd=True), _whole("c", c, 1)
        self.in_channels, self.out_channels = _whole("in_channels", in_channels, 1), _whole("out_channels", out_channels, 1)
        self.residual = self._residual_check(residual, self.in_channels, self.out_channels)
        widths = [self.in_channels] + [self.c] * (self.L - 1) + [self.out_channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, self.k, padding=self.k // 2) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        self._check_x(x)
        y = x
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i < len(self.convs) - 1:
                y = F.relu(y)
        return y + x[:, : self.out_channels] if self.residual else y


class CoordGateFCNN(_Base):
    """``CG-FCNN(L, k, c, p)``: ``L - 1`` CoordGate layers (``k x k``, ``c`` channels, gate MLP of ``p`` layers),
    ReLU after each, then a plain ``k x k`` convolution to ``out_channels``.

    Parameters
    ----------
    L, k, c, in_channels, out_channels, residual :
        As :class:`FCNN`.
    p : int
        Layers of each gate MLP (the CoordGate paper's ``p``).
    gate, fourier, gate_hidden, gate_activation :
        The gate MLP (:class:`recon.layers.coordgate.GateMLP`).
    """

    position_aware = True

    def __init__(self, L: int = 4, k: int = 3, c: int = 11, p: int = 2, in_channels: int = 1, out_channels: int = 1, *,
                 residual: bool = False, gate: str = "mlp", fourier: int = 0, gate_hidden: int | None = None,
                 gate_activation: str = "none"):
        super().__init__()
        self.L, self.k, self.c = _whole("L", L, 2, 64), _whole("k", k, 1, odd=True), _whole("c", c, 1)
        self.p = _whole("p", p, 1)
        self.in_channels, self.out_channels = _whole("in_channels", in_channels, 1), _whole("out_channels", out_channels, 1)
        self.residual = self._residual_check(residual, self.in_channels, self.out_channels)
        widths = [self.in_channels] + [self.c] * (self.L - 1)
        self.gated = nn.ModuleList(
            CoordGate(a, b, self.k, gate_layers=self.p, gate_hidden=gate_hidden, gate=gate, fourier=fourier,
                      gate_activation=gate_activation, dims=2)
            for a, b in zip(widths[:-1], widths[1:]))
        self.last = nn.Conv2d(self.c, self.out_channels, self.k, padding=self.k // 2)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        coords = check_coords(x, coords)
        y = x
        for layer in self.gated:
            y = F.relu(layer(y, coords))
        y = self.last(y)
        return y + x[:, : self.out_channels] if self.residual else y


class PAFUNet(_Base):
    """``PAFU-net``: one :class:`~recon.layers.PAFU` layer (``n_kernels`` kernels of ``k x k``, one chosen per pixel
    by a scoring CNN ``Conv(scorer_kernel, scorer_hidden) -> ReLU -> Conv1x1(n)``); ``coords`` ignored.

    Parameters
    ----------
    k : int
        Odd kernel size of the group (5: the 5 x 5 dilation of the dataset).
    n_kernels : int
        Kernels in the group (2: the paper's Dirac + zero minimal solution).
    scorer_hidden, scorer_kernel : int
        The scoring CNN's width and its spatial kernel (5: it must see the whole 5 x 5 neighbourhood).
    tau : float
        Gumbel-softmax temperature in training.
    in_channels, out_channels : int
    """

    def __init__(self, k: int = 5, n_kernels: int = 2, scorer_hidden: int = 100, scorer_kernel: int = 5,
                 tau: float = 1.0, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = _whole("in_channels", in_channels, 1), _whole("out_channels", out_channels, 1)
        self.pafu = PAFU(self.in_channels, self.out_channels, k, n_kernels, tau=tau, scorer_hidden=scorer_hidden,
                         scorer_kernel=scorer_kernel)

    @property
    def halo(self) -> int:
        return self.pafu.reach

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Index ``(B, H, W)`` of the kernel each pixel uses at inference."""
        self._check_x(x)
        return self.pafu.select(x)

    def decorrelation_loss(self) -> torch.Tensor:
        """PAFU's ``||W W^T - I||_F^2`` over its kernel group (:meth:`recon.layers.PAFU.decorrelation_loss`)."""
        return self.pafu.decorrelation_loss()

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        self._check_x(x)
        return self.pafu(x)
