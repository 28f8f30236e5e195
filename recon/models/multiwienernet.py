"""MultiWienerNet (Yanny, Monakhova, Shuai & Waller, "Deep learning for fast spatially varying deconvolution",
Optica 9, 96 (2022)): K learnable Wiener deconvolutions (:class:`recon.layers.MultiWiener`), one per PSF of a
grid over the field, fed as K channels into a U-Net that learns to merge them into one image.

``model(x (B, 1, H, W), coords (B, 2, H, W)) -> (B, 1, H, W)``. ``coords`` is accepted for the common calling
convention and **unused**: the network knows the field only through the K PSFs, which are those of fixed
field positions of the whole frame, so it is meant to run on whole frames (or on crops whose field position the
U-Net can infer from the content). A crop or tile is deconvolved with the frame's PSF grid regardless of where
it lies.

Where it follows or departs from the authors' TensorFlow code (Waller-Lab/MultiWienerNet,
``tensorflow/models/layers.py`` ``MultiWienerDeconvolution``, ``tensorflow/models/model_2d.py``
``UNet_multiwiener_resize``, ``tensorflow/training_code.ipynb``), rather than their PyTorch port (circular
FFTs, no non-negativity constraint):

- Wiener layer: zero-padding to twice the size and a centre crop (linear convolution), ``conj(H) Y /
  (|H|^2 + 1000 K)``, ``K`` initialised to 1 per PSF and kept ``>= 0``, PSFs initialised from a 3 x 3 grid of
  field PSFs divided by the stack's global maximum, PSFs and ``K`` learnable: all as the authors. The
  differences (PSF box vs frame-sized PSFs, where the padding goes, how ``K >= 0`` is kept) are detailed in
  :mod:`recon.layers.wiener`.
- PSFs: from a psfsim lens (``lens.psf_grid(*grid)``, nodes at the frame's corners, edges and centre) instead of
  measured PSFs registered from a calibration stack; without a lens, Gaussian stand-ins
  (:func:`recon.layers.wiener.gaussian_psfs`) so that the model constructs (``recon models``) and can be
  tested.
- U-Net: recon's :class:`recon.models.unet.UNet` (``variant="plain"``: 2 x (3 x 3 conv + ReLU) per level,
  max-pooling, transposed-conv up-sampling, channels ``base_channels * 2^l``), not the authors' (6 levels of
  24, 64, ..., 1024 channels, conv + BatchNorm + ReLU, average pooling, nearest up-sampling, three convs per
  decoder block, no skip at the last level, final ReLU). The defaults ``depth=3``, ``base_channels=16`` are
  recon's ``unet`` defaults, so that MultiWienerNet, UNet and CG-UNet compare the same U-Net with different
  front ends (the authors' U-Net is far larger). No output ReLU (recon's models are linear at the end;
  clamp at evaluation if wanted).
- Receptive field: the Wiener layer is global (every output pixel depends on the whole input through the
  padded FFT): :attr:`receptive_field` and :attr:`halo` are None ("global"). :attr:`tile_halo` is a practical
  context for tiled inference (the PSF box plus the U-Net's halo): the inverse filter's impulse response is
  not compactly supported, so tiles with this context differ from the whole-frame result by the filter's tail
  beyond it (small when the regularisation is strong), not by zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from ..errors import ReconError
from ..layers.wiener import MultiWiener, gaussian_psfs, lens_psfs
from .unet import UNet

__all__ = ["MultiWienerNet", "resolve_lens"]


def resolve_lens(lens):
    """A psfsim Lens from a preset name / TOML path (:func:`psfsim.load_lens`), a parsed lens TOML dict
    (:func:`psfsim.lens_from_dict`) or a Lens (returned)."""
    import psfsim

    if isinstance(lens, Mapping):
        return psfsim.lens_from_dict(lens)
    return psfsim.load_lens(lens)


class MultiWienerNet(nn.Module):
    """MultiWiener deconvolutions + U-Net: ``model(x (B, 1, H, W), coords) -> (B, 1, H, W)`` (coords unused).

    Parameters
    ----------
    lens : str, dict or psfsim.Lens, optional
        Where the initial PSFs come from: a preset name or TOML path, a parsed lens TOML dict (JSON-able: what a
        checkpoint's config stores) or a Lens. The PSFs are rebuilt from it (``lens.psf_grid(*grid)``).
    psfs : array (K, k, k), optional
        Initial PSFs given directly (instead of ``lens``), used as given (no normalisation). A nested list keeps
        the config JSON-able.
    grid : (ny, nx)
        PSF grid over the frame (K = ny * nx; the authors: 3 x 3).
    psf_size : int
        Box of the Gaussian stand-in PSFs when neither ``lens`` nor ``psfs`` is given.
    depth, base_channels :
        The U-Net (:class:`recon.models.unet.UNet`, plain, ``in_channels = K``).
    reg_init, reg_scale, learn_psfs, learn_reg :
        The Wiener layer (:class:`recon.layers.MultiWiener`; the authors: 1 and 1000, both learnable).

    Inputs must be at least ``2^depth`` pixels a side.
    """

    position_aware = False

    def __init__(self, lens=None, psfs=None, grid=(3, 3), *, psf_size: int = 15, depth: int = 3,
                 base_channels: int = 16, reg_init=1.0, reg_scale: float = 1000.0, learn_psfs: bool = True,
                 learn_reg: bool = True):
        super().__init__()
        if lens is not None and psfs is not None:
            raise ReconError("lens and psfs both given: pass one (the PSFs are built from the lens)")
        try:
            grid = tuple(int(g) for g in grid)
        except (TypeError, ValueError):
            raise ReconError(f"grid = {grid!r}: expected (ny, nx)") from None
        if len(grid) != 2 or min(grid) < 1:
            raise ReconError(f"grid = {grid!r}: expected (ny, nx), whole numbers >= 1")
        if psfs is not None:
            p = psfs.detach().cpu().double().numpy() if isinstance(psfs, torch.Tensor) else np.asarray(psfs, np.float64)
        elif lens is not None:
            resolved = resolve_lens(lens)
            p = lens_psfs(resolved, grid)
            # the config keeps the lens description, not a path: a checkpoint must rebuild anywhere
            self.config_updates = {"lens": resolved.to_dict()}
        else:
            p = gaussian_psfs(grid, psf_size)
        self.wiener = MultiWiener(p, reg_init=reg_init, reg_scale=reg_scale, learn_psfs=learn_psfs,
                                  learn_reg=learn_reg)
        self.unet = UNet(depth, in_channels=self.wiener.n_psfs, out_channels=1, base_channels=base_channels,
                         variant="plain")
        self.depth = self.unet.depth

    @property
    def receptive_field(self):
        """None: global (the Wiener layer's FFT couples every pixel of the input)."""
        return None

    @property
    def halo(self):
        """None: global (see :attr:`tile_halo` for a practical tiling context)."""
        return None

    @property
    def tile_align(self) -> int:
        """Read-origin alignment for tiled inference: the U-Net's ``2^depth`` (its pooling grids must be the
        whole frame's)."""
        return self.unet.tile_align

    @property
    def tile_halo(self) -> int:
        """Practical one-sided context for tiled inference: the PSF box plus the U-Net's halo. Not exact: the
        Wiener inverse filter's tail reaches further (see the module docstring)."""
        return max(self.wiener.psf_size) + self.unet.halo

    def constrain_(self) -> None:
        """Project the Wiener regularisation onto ``>= 0`` (call after ``optimizer.step()``, as Keras does)."""
        self.wiener.constrain_()

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
            raise ReconError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, 1, H, W)")
        return self.unet(self.wiener(x))
