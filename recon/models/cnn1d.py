"""1-D models of the CoordGate paper's spatially-varying convolution experiment (arXiv 2401.04680, Sec. IV.A):
``CNN(L, k, c)``, ``cCNN(L, k, c)`` (CoordConv: coordinates concatenated before every convolution) and
``CG(L, k, c, p)`` (CoordGate layers), all called as ``model(x (B, 1, n), coords (B, 1, n))``, and the paper's
control :class:`NoiseGateCNN1d` (the same CG with U(-1, 1) noise as its static gate input instead of the
coordinates), and :class:`FreeGateLC1d`, a reference bounding what any ``CG(1, k, c, p)`` can do (its gates a
free table per position).

``L`` convolution layers of kernel ``k`` (odd, same padding) and ``c`` channels with ReLU between them, the
last layer producing 1 channel. In ``CG`` with ``L >= 2`` every layer but the last is a
:class:`~recon.layers.CoordGate` whose gate MLP has ``p`` 1 x 1 layers of ``c`` units, and the last layer is a
plain convolution to 1 channel. ``CG(1, k, c, p)`` is the paper's one-layer CoordGate: a **single** gated
convolution (``1 -> c`` channels, kernel ``k``) whose ``c`` gated channels are combined into the 1-channel output
by a 1 x 1 convolution, i.e. ``y(x) = b + sum_j a_j g_j(x) (w_j * m)(x)`` (Eq. 3 of arXiv 2401.04680 with a
mixing layer): a filter bank of ``c`` kernels mixed per position, a locally connected layer of rank ``c``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coords import check_coords
from ..errors import ReconError
from ..layers import CoordConv, CoordGate

__all__ = ["CNN1d", "CoordConvCNN1d", "CoordGateCNN1d", "NoiseGateCNN1d", "FreeGateLC1d"]


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
    then a plain convolution to 1 channel; ``L = 1``: one CoordGate layer whose ``c`` gated channels are mixed
    to 1 channel by a 1 x 1 convolution (see the module docstring)."""

    def __init__(self, L: int = 3, k: int = 5, c: int = 16, p: int = 2, in_channels: int = 1, *, gate: str = "mlp",
                 fourier: int = 0, gate_activation: str = "none"):
        _check(L, k, c)
        super().__init__(L, k)
        self.p = p
        kw = dict(gate_layers=p, gate=gate, fourier=fourier, gate_activation=gate_activation, dims=1)
        if self.L == 1:
            self.gated = nn.ModuleList([CoordGate(in_channels, c, k, mix=1, **kw)])
            self.last = None
        else:
            widths = [in_channels] + [c] * (L - 1)
            self.gated = nn.ModuleList(CoordGate(a, b, k, **kw) for a, b in zip(widths[:-1], widths[1:]))
            self.last = nn.Conv1d(widths[-1], 1, k, padding=k // 2)

    def static_input(self, x, coords):
        """The gates' input: the field coordinates of x's samples (checked against ``x``)."""
        return check_coords(x, coords)

    def forward(self, x, coords=None):
        self._check_x(x)
        s = self.static_input(x, coords)
        if self.last is None:
            return self.gated[0](x, s)
        for layer in self.gated:
            x = F.relu(layer(x, s))
        return self.last(x)


class NoiseGateCNN1d(CoordGateCNN1d):
    """The CoordGate paper's random-input control: ``CG(L, k, c, p)`` whose gates see a fixed U(-1, 1) noise
    vector of the signal's length instead of the coordinates.

    The noise ``static (1, 1, length)`` is drawn once from ``noise_seed`` (a ``torch.Generator`` on the CPU) at
    construction and kept as a buffer (saved in the ``state_dict``): the same at training and inference, the
    same for every sample of a batch, like the coordinates it replaces. Any ``coords`` passed are ignored.
    Inputs must have exactly ``length`` samples (the noise has no meaning at another size).
    """

    position_aware = False

    def __init__(self, L: int = 1, k: int = 15, c: int = 3, p: int = 2, in_channels: int = 1, *, length: int = 30,
                 noise_seed: int = 0, gate: str = "mlp", fourier: int = 0, gate_activation: str = "none"):
        super().__init__(L, k, c, p, in_channels, gate=gate, fourier=fourier, gate_activation=gate_activation)
        if isinstance(length, bool) or int(length) != length or length < 1:
            raise ReconError(f"length = {length!r}: expected a whole number of samples >= 1")
        self.length, self.noise_seed = int(length), int(noise_seed)
        g = torch.Generator().manual_seed(self.noise_seed)
        self.register_buffer("static", torch.rand(1, 1, self.length, generator=g) * 2.0 - 1.0)

    def static_input(self, x, coords=None):
        if x.shape[-1] != self.length:
            raise ReconError(f"x of length {x.shape[-1]}: this random-input control was built for length "
                             f"{self.length} (its noise input is fixed per sample position)")
        return self.static.to(dtype=x.dtype).expand(x.shape[0], -1, -1)


class FreeGateLC1d(nn.Module):
    """A reference, not a model of the paper: ``CG(1, k, c, p)``'s structure with the gates a free ``(c, length)``
    table of parameters instead of an MLP of the coordinates: ``y(x) = b + sum_j a_j G[j, x] (w_j * m)(x)``.

    Every ``CG(1, k, c, p)`` is one of these (its gates are some function of the position), so this model trained
    the same way estimates the best a one-layer CoordGate with ``c`` channels can do on a fixed-length problem,
    whatever its gate MLP: the ceiling of the architecture (a locally connected layer of rank ``c``), which
    separates "the gate MLP could not learn it" from "``c`` channels cannot represent it". Gates start at
    ``1 + 0.1 N(0, 1)``. Inputs must have exactly ``length`` samples; ``coords`` are ignored.
    """

    position_aware = False

    def __init__(self, k: int = 15, c: int = 3, length: int = 30):
        super().__init__()
        _check(1, k, c)
        if isinstance(length, bool) or int(length) != length or length < 1:
            raise ReconError(f"length = {length!r}: expected a whole number of samples >= 1")
        self.k, self.length = int(k), int(length)
        self.conv = nn.Conv1d(1, c, k, padding=k // 2)
        self.gates = nn.Parameter(1.0 + 0.1 * torch.randn(1, c, self.length))
        self.mix = nn.Conv1d(c, 1, 1)

    def forward(self, x, coords=None):
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != 1:
            raise ReconError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, 1, {self.length})")
        if x.shape[-1] != self.length:
            raise ReconError(f"x of length {x.shape[-1]}: this free-gate reference has gates for {self.length} samples")
        return self.mix(self.conv(x) * self.gates)
