"""CoordGate: a conv block whose output channels are gated per pixel by an MLP of the pixel's field
coordinates (Howard, Norreys & Döpp, arXiv 2401.04680, Eq. 3 and Fig. 2).

``y = h(x) . g(C)``: ``h`` a convolution block with ``c`` output channels, ``g`` a pixel-wise MLP (1 x 1
convolutions, ``p`` layers of ``c`` units) of the coordinate map ``C``, ``.`` the Hadamard product, and an
optional final 1 x 1 convolution mixing the gated channels. Each pixel thus gets its own mix of the learned
filters, as a locally connected layer would, for the parameters of a convolution plus a small MLP.

Departures from the authors' public code, on purpose (see the recon README section):

- ``gate="mlp"`` (default) is a real MLP: ReLU between hidden layers. The authors' code stacks Linear layers
  with no activation, so each gate is a plane in ``(x, y)``; ``gate="linear"`` reproduces that choice.
- Coordinates are an input (the field coordinates of the pixels of ``x``, :mod:`recon.coords`), never a
  ``linspace`` buffer fixed at construction: any size, any aspect ratio, crops and tiles carry their window.
- An optional Fourier encoding of the coordinates (``fourier=n``: ``sin/cos(2^j pi x)``, ``j < n``) for gates
  that vary faster than an MLP of raw coordinates learns easily.
- The gate's output activation is documented and chosen: ``"none"`` (default: signed gates, as the paper's
  appendix construction needs), ``"sigmoid"`` or ``"softplus"``.

Gate caching ("once trained, one saves the gating map"): in eval mode with ``cache_gates=True`` the gates of a
field window are computed once and reused, keyed by the window (the coordinate map's shape and its corner
values, which determine an affine map exactly), in a small LRU; training mode never reads or fills the cache.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn

from psfsim.cache import BoundedCache

from ..coords import check_coords
from ..errors import ReconError

__all__ = ["CoordGate", "GateMLP", "GATES", "GATE_ACTIVATIONS"]

GATES = ("mlp", "linear")
GATE_ACTIVATIONS = ("none", "sigmoid", "softplus")


def _conv(dims: int):
    if dims not in (1, 2):
        raise ReconError(f"dims = {dims!r}: expected 1 or 2")
    return nn.Conv1d if dims == 1 else nn.Conv2d


class GateMLP(nn.Module):
    """Pixel-wise MLP ``(B, n_coords, *S) -> (B, channels, *S)`` of the coordinate map (1 x 1 convolutions).

    Parameters
    ----------
    n_coords : int
        Coordinate channels (2 for images, 1 for 1-D signals).
    channels : int
        Gates produced (the conv block's output channels).
    layers : int
        Number of 1 x 1 layers ``p`` (>= 1); hidden layers have ``hidden`` units.
    hidden : int, optional
        Hidden width (default ``channels``, the paper's ``c`` units).
    gate : {"mlp", "linear"}
        ReLU between layers, or none (the authors' code: each gate a plane in the coordinates).
    fourier : int
        Fourier-feature octaves of the coordinates (0: raw coordinates).
    activation : {"none", "sigmoid", "softplus"}
        Output activation of the gates.
    dims : {1, 2}
    """

    def __init__(self, n_coords: int, channels: int, layers: int = 2, hidden: int | None = None, *, gate: str = "mlp",
                 fourier: int = 0, activation: str = "none", dims: int = 2):
        super().__init__()
        if gate not in GATES:
            raise ReconError(f"gate = {gate!r}: expected one of {', '.join(GATES)}")
        if activation not in GATE_ACTIVATIONS:
            raise ReconError(f"gate_activation = {activation!r}: expected one of {', '.join(GATE_ACTIVATIONS)}")
        if int(layers) != layers or layers < 1:
            raise ReconError(f"gate_layers = {layers!r}: expected a whole number >= 1")
        if int(fourier) != fourier or not 0 <= fourier <= 16:
            raise ReconError(f"fourier = {fourier!r}: expected a whole number in 0..16")
        conv = _conv(dims)
        hidden = int(hidden or channels)
        self.fourier = int(fourier)
        self.activation = activation
        n_in = n_coords * (1 + 2 * self.fourier)
        mods: list[nn.Module] = []
        width = n_in
        for i in range(int(layers)):
            last = i == layers - 1
            mods.append(conv(width, channels if last else hidden, 1))
            if not last and gate == "mlp":
                mods.append(nn.ReLU(inplace=True))
            width = hidden
        self.net = nn.Sequential(*mods)

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        if not self.fourier:
            return coords
        feats = [coords]
        for j in range(self.fourier):
            a = (2.0**j * math.pi) * coords
            feats += [torch.sin(a), torch.cos(a)]
        return torch.cat(feats, dim=1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        g = self.net(self.encode(coords))
        if self.activation == "sigmoid":
            return torch.sigmoid(g)
        if self.activation == "softplus":
            return nn.functional.softplus(g)
        return g


class CoordGate(nn.Module):
    """``y = mix(h(x) . g(coords))`` (arXiv 2401.04680, Eq. 3): a gated convolution block, 1-D or 2-D.

    Parameters
    ----------
    in_channels, channels : int
        Input channels and the block's output channels ``c`` (= gates).
    kernel_size : int
        Odd kernel of the block's convolutions (``same`` padding: output size = input size).
    block_layers : int
        Convolutions in ``h`` (ReLU between them; the last one is linear, as in the paper's Fig. 2).
    gate_layers, gate_hidden, gate, fourier, gate_activation :
        The gate MLP (:class:`GateMLP`); ``gate_layers`` is the paper's ``p``.
    mix : int, optional
        Output channels of a final 1 x 1 convolution mixing the gated channels (None: no mixing).
    dims : {1, 2}
    cache_gates : bool
        Reuse gates per field window in eval mode (see module docstring).
    block : nn.Module, optional
        A ready-made conv block ``h`` (``in_channels -> channels``, size-preserving) used instead of the
        default stack, e.g. a U-Net's double convolution.

    Shapes: ``x (B, in_channels, *S)``, ``coords (B, 2, *S)`` (1-D: ``(B, 1, L)``) -> ``(B, mix or channels, *S)``.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int = 3, *, block_layers: int = 1,
                 gate_layers: int = 2, gate_hidden: int | None = None, gate: str = "mlp", fourier: int = 0,
                 gate_activation: str = "none", mix: int | None = None, dims: int = 2, cache_gates: bool = True,
                 block: nn.Module | None = None, cache_size: int = 8):
        super().__init__()
        conv = _conv(dims)
        for name, v in (("in_channels", in_channels), ("channels", channels)):
            if int(v) != v or v < 1:
                raise ReconError(f"{name} = {v!r}: expected a whole number >= 1")
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ReconError(f"kernel_size = {kernel_size!r}: expected an odd whole number >= 1 (same padding)")
        self.dims = dims
        if block is None:
            if int(block_layers) != block_layers or block_layers < 1:
                raise ReconError(f"block_layers = {block_layers!r}: expected a whole number >= 1")
            mods: list[nn.Module] = []
            width = in_channels
            for i in range(int(block_layers)):
                mods.append(conv(width, channels, kernel_size, padding=kernel_size // 2))
                if i < block_layers - 1:
                    mods.append(nn.ReLU(inplace=True))
                width = channels
            block = nn.Sequential(*mods)
        self.block = block
        self.gate = GateMLP(dims, channels, gate_layers, gate_hidden, gate=gate, fourier=fourier,
                            activation=gate_activation, dims=dims)
        self.mix = conv(channels, int(mix), 1) if mix else None
        self.cache_gates = bool(cache_gates)
        self.cache_size = int(cache_size)
        # at most `cache_size` windows and 64 MiB of gates per layer (tiles of a huge frame are each a new
        # window: the cache helps repeated windows, e.g. a fixed field of view, not a single pass over tiles)
        self._gates = BoundedCache(max_items=self.cache_size, max_bytes=64 * 2**20)

    # -- gates --------------------------------------------------------------------------------------
    def window_key(self, coords: torch.Tensor) -> tuple:
        """A window's key: the coordinate map (shape, device, dtype, its first, middle and last pixels and its
        sums, per sample), the autocast state, and the gate parameters' versions (any in-place change to them,
        an optimiser step or a ``load_state_dict``, makes a new key: stale gates are never served)."""
        flat = coords.detach().flatten(2)
        mid = flat.shape[-1] // 2
        stats = torch.stack([flat[:, :, 0], flat[:, :, mid], flat[:, :, -1], flat.sum(-1), (flat * flat).sum(-1)], -1)
        dev = coords.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        versions = tuple(p._version for p in self.gate.parameters())
        return (tuple(coords.shape), str(coords.device), coords.dtype, amp, versions,
                tuple(stats.double().flatten().tolist()))

    def gates(self, coords: torch.Tensor) -> torch.Tensor:
        """Gating map ``(B, channels, *S)`` of a coordinate map (cached per window in eval mode)."""
        if self.training or not self.cache_gates or torch.is_grad_enabled():
            if self.training and len(self._gates):
                self._gates.clear()  # parameters change while training: never serve stale gates later
            return self.gate(coords)
        return self._gates.get(self.window_key(coords), lambda: self.gate(coords))

    def clear_gate_cache(self) -> None:
        self._gates.clear()

    def train(self, mode: bool = True):
        self._gates.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._gates.clear()  # moved or cast: cached gates belong to the old device/dtype
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.dims + 2:
            raise ReconError(f"x of shape {tuple(x.shape)}: expected {'(B, C, L)' if self.dims == 1 else '(B, C, H, W)'}")
        coords = check_coords(x, coords)
        y = self.block(x) * self.gates(coords.to(x.dtype))
        return self.mix(y) if self.mix is not None else y
