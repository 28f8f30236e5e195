"""U-Nets of depth ``d`` (Ronneberger et al. 2015), plain, with CoordGate (CG-UNet, arXiv 2401.04680 Sec. IV.B)
or with CoordConv (CoordConv-UNet), all called as ``model(x, coords)``.

Architecture (``d`` = number of 2x down-samplings, 1 <= d <= 6): at each level ``l`` a double convolution
(3 x 3 conv + ReLU, twice) with ``n_c[l] = base_channels * 2^l`` channels, 2 x 2 max-pooling between levels,
a bottleneck at level ``d``, then per level a 2 x 2 transposed convolution (stride 2), concatenation with the
skip connection and a double convolution; a final 1 x 1 convolution. ``base_channels`` defaults to 16, so
UNet(3) has 16, 32, 64, 128 channels and UNet(6) 16 ... 1024.

- ``variant="coordgate"``: every double convolution (encoder, bottleneck, decoder: every down- and up-sampling
  point) is the conv block ``h`` of a :class:`~recon.layers.CoordGate`, its output gated per pixel by an MLP
  (``gate_layers`` 1 x 1 layers of ``n_c[l]`` units) of the level's field coordinates.
- ``variant="coordconv"``: every 3 x 3 convolution sees the level's coordinates as two extra channels.
- Coordinates are pooled with the data (:func:`recon.coords.pool_coords`): each level sees its own pixels'
  field coordinates, so a crop at an origin multiple of ``2^d`` gives the crop of the whole frame's output
  wherever the receptive field stays inside the crop.

Inputs of any size >= ``2^d``: sizes that are not multiples of ``2^d`` are padded at the bottom/right (data
by reflection, coordinates by continuing their affine map) and the output is cropped back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coords import check_coords, pool_coords
from ..errors import ReconError
from ..layers import CoordConv, CoordGate

__all__ = ["UNet", "VARIANTS", "MAX_DEPTH", "unet_input_interval"]

VARIANTS = ("plain", "coordgate", "coordconv")
MAX_DEPTH = 6


class _DoubleConv(nn.Module):
    """3 x 3 conv + ReLU, twice (coords optional: used by the CoordConv variant only)."""

    def __init__(self, cin: int, cout: int, coordconv: bool = False):
        super().__init__()
        self.coordconv = coordconv
        if coordconv:
            self.c1 = CoordConv(cin, cout, 3)
            self.c2 = CoordConv(cout, cout, 3)
        else:
            self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.c2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x, coords=None):
        if self.coordconv:
            return F.relu(self.c2(F.relu(self.c1(x, coords)), coords))
        return F.relu(self.c2(F.relu(self.c1(x))))


class _Level(nn.Module):
    """One level's double convolution, gated by CoordGate in the CG variant."""

    def __init__(self, cin: int, cout: int, variant: str, gate_cfg: dict):
        super().__init__()
        self.variant = variant
        dc = _DoubleConv(cin, cout, coordconv=variant == "coordconv")
        self.body = CoordGate(cin, cout, block=dc, **gate_cfg) if variant == "coordgate" else dc

    def forward(self, x, coords):
        if self.variant == "plain":
            return self.body(x)
        return self.body(x, coords)


def unet_input_interval(depth: int, a: int, b: int, *, input_reach: int = 1) -> tuple[int, int]:
    """Input pixels ``[lo, hi]`` (one axis) that the U-Net's output pixels ``a..b`` depend on.

    Backwards through the architecture: a 3 x 3 convolution widens an interval by 1 at its level, 2 x 2
    max-pooling maps level-(l+1) ``[a, b]`` to level-l ``[2a, 2b + 1]``, the stride-2 transposed convolution
    maps level-l ``[a, b]`` to level-(l+1) ``[a // 2, b // 2]``, and a skip concatenation is a union.
    ``input_reach``: the one-sided reach of the network's input layer (the first conv of the first encoder
    block, 1 for a 3 x 3 conv; a replacement such as PAFU may reach further).
    """

    def enc_in(level, a, b):  # the encoder block's input at `level` (level 0: the network input)
        if level == 0:
            return a, b
        return enc_out(level - 1, 2 * a, 2 * b + 1)

    def enc_out(level, a, b):  # two 3x3 convs (at level 0 the first one reaches `input_reach`)
        r = 1 + (input_reach if level == 0 else 1)
        return enc_in(level, a - r, b + r)

    def dec_out(level, a, b):
        if level == depth:  # the bottleneck
            return enc_in(depth, a - 2, b + 2)
        a, b = a - 2, b + 2  # the decoder's two convs, over cat(up, skip)
        s_lo, s_hi = enc_out(level, a, b)
        u_lo, u_hi = dec_out(level + 1, a // 2, b // 2)
        return min(s_lo, u_lo), max(s_hi, u_hi)

    return dec_out(0, a, b)


def _extend_coords(coords: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Continue an affine coordinate map ``ph`` rows down and ``pw`` columns right."""
    if pw:
        step = coords[..., :, -1:] - coords[..., :, -2:-1]
        k = torch.arange(1, pw + 1, device=coords.device, dtype=coords.dtype)
        coords = torch.cat([coords, coords[..., :, -1:] + step * k], dim=-1)
    if ph:
        step = coords[..., -1:, :] - coords[..., -2:-1, :]
        k = torch.arange(1, ph + 1, device=coords.device, dtype=coords.dtype)[:, None]
        coords = torch.cat([coords, coords[..., -1:, :] + step * k], dim=-2)
    return coords


class UNet(nn.Module):
    """U-Net of depth ``d``: ``model(x (B, in_channels, H, W), coords (B, 2, H, W)) -> (B, out_channels, H, W)``.

    Parameters
    ----------
    depth : int
        Down-samplings ``d`` (1..6; the papers use 3..6). Inputs must be at least ``2^d`` pixels a side.
    in_channels, out_channels : int
    base_channels : int
        ``n_c[0]``; level ``l`` has ``base_channels * 2^l`` channels.
    variant : {"plain", "coordgate", "coordconv"}
    gate_layers, gate, fourier, gate_activation :
        CoordGate's gate MLP (``variant="coordgate"``): see :class:`recon.layers.CoordGate`.
    residual : bool
        Predict a correction added to the input's first ``out_channels`` channels (``y = x + net(x)``), the
        usual choice for deblurring (it starts at the blurred image, not at zero); off by default, as in the
        papers' U-Nets.

    ``coords`` is required by the position-aware variants and ignored (may be None) by the plain U-Net.
    """

    input_reach = 1  # one-sided reach of the input layer enc[0].body.c1 (a 3 x 3 conv); subclasses may change it

    def __init__(self, depth: int = 3, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, *,
                 variant: str = "plain", gate_layers: int = 2, gate: str = "mlp", fourier: int = 0,
                 gate_activation: str = "none", residual: bool = False):
        super().__init__()
        if isinstance(depth, bool) or int(depth) != depth or not 1 <= depth <= MAX_DEPTH:
            raise ReconError(f"depth d = {depth!r}: expected a whole number in 1..{MAX_DEPTH}")
        if variant not in VARIANTS:
            raise ReconError(f"variant = {variant!r}: expected one of {', '.join(VARIANTS)}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("base_channels", base_channels)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ReconError(f"{name} = {v!r}: expected a whole number >= 1")
        self.depth = int(depth)
        self.variant = variant
        if residual and in_channels < out_channels:
            raise ReconError(f"residual = True needs in_channels >= out_channels, got {in_channels} < {out_channels}")
        self.residual = bool(residual)
        self.position_aware = variant != "plain"
        gate_cfg = dict(gate_layers=gate_layers, gate=gate, fourier=fourier, gate_activation=gate_activation)
        ch = [base_channels * 2**level for level in range(self.depth + 1)]
        self.channels = tuple(ch)
        self.enc = nn.ModuleList()
        cin = in_channels
        for level in range(self.depth):
            self.enc.append(_Level(cin, ch[level], variant, gate_cfg))
            cin = ch[level]
        self.bottleneck = _Level(ch[-2], ch[-1], variant, gate_cfg)
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[level + 1], ch[level], 2, stride=2) for level in range(self.depth))
        self.dec = nn.ModuleList(_Level(2 * ch[level], ch[level], variant, gate_cfg) for level in range(self.depth))
        self.head = nn.Conv2d(ch[0], out_channels, 1)
        if self.residual:  # start exactly at the input: the network learns the correction from zero
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def halo(self) -> int:
        """Largest one-sided reach (pixels) of an output pixel into the input, over every pixel position: tiles
        need this much context on each side. Computed from the architecture by propagating index intervals
        back through the layers (:func:`unet_input_interval`); an impulse-response test confirms it."""
        d = self.depth
        base = 2**d * 64
        reach = 0
        for r in range(2**d):
            j = base + r
            lo, hi = unet_input_interval(d, j, j, input_reach=self.input_reach)
            reach = max(reach, j - lo, hi - j)
        return reach

    @property
    def receptive_field(self) -> int:
        """Receptive field diameter in pixels (``2 * halo + 1``, an upper bound)."""
        return 2 * self.halo + 1

    @property
    def tile_align(self) -> int:
        """Read-origin alignment for tiled inference, pixels: ``2^depth``, so a tile's pooling grids are the
        whole frame's (what :mod:`pipelines` tiles with)."""
        return 2**self.depth

    @property
    def tile_halo(self) -> int:
        """One-sided context for tiled inference, pixels: :attr:`halo` (exact: a tile with it reproduces the
        whole-frame output)."""
        return self.halo

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ReconError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, C, H, W)")
        H, W = x.shape[-2:]
        m = 2**self.depth
        if H < m or W < m:
            raise ReconError(f"input of size {H} x {W} is smaller than 2^d = {m} (depth d = {self.depth}); "
                             f"use a smaller depth or a larger input")
        if self.position_aware:
            coords = check_coords(x, coords)
        x_in = x
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
            if self.position_aware:
                coords = _extend_coords(coords, ph, pw)
        skips = []
        c = coords
        for level in range(self.depth):
            x = self.enc[level](x, c)
            skips.append((x, c))
            x = F.max_pool2d(x, 2)
            c = pool_coords(c) if self.position_aware else None
        x = self.bottleneck(x, c)
        for level in reversed(range(self.depth)):
            skip, c = skips[level]
            x = self.dec[level](torch.cat([self.up[level](x), skip], dim=1), c)
        out = self.head(x)
        out = out[..., :H, :W] if (ph or pw) else out
        return out + x_in[:, : out.shape[1]] if self.residual else out
