"""Training losses: MSE, L1, L1 + (1 - SSIM) (MultiWienerNet's), with a small differentiable SSIM.

:func:`ssim` is Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5, the window scipy's
``gaussian_filter(sigma=1.5, truncate=3.5)`` uses), ``K1 = 0.01``, ``K2 = 0.03``, population (co)variances,
averaged over the pixels whose window lies inside the image: it equals
``skimage.metrics.structural_similarity(a, b, data_range=R, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` (tested to 1e-6 in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ReconError

__all__ = ["ssim", "gaussian_window", "make_loss", "psnr"]


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``sigma`` with radius ``int(truncate * sigma + 0.5)`` (scipy's)."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of ``x (N, 1, H, W)``."""
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1))
    return F.conv2d(x, g.view(1, 1, 1, k))


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, reduction: str = "mean") -> torch.Tensor:
    """SSIM of ``a`` and ``b`` (``(..., H, W)``, same shape), differentiable.

    ``reduction``: ``"mean"`` (one number), or ``"none"`` (one per image, shape ``a.shape[:-2]``).
    Images must be at least the window (11 x 11 at sigma 1.5) a side.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ReconError(f"ssim: shapes {tuple(a.shape)} and {tuple(b.shape)}: expected two equal (..., H, W)")
    g = gaussian_window(sigma, dtype=a.dtype, device=a.device)
    H, W = a.shape[-2:]
    if H < g.numel() or W < g.numel():
        raise ReconError(f"ssim: images of {H}x{W} are smaller than the {g.numel()}x{g.numel()} window")
    lead = a.shape[:-2]
    x, y = a.reshape(-1, 1, H, W), b.reshape(-1, 1, H, W)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per = s.mean(dim=(-3, -2, -1)).reshape(lead)
    if reduction == "none":
        return per
    if reduction == "mean":
        return per.mean()
    raise ReconError(f"ssim: reduction {reduction!r}: expected 'mean' or 'none'")


def make_loss(name: str):
    """The loss ``f(pred, target) -> scalar`` of ``name`` (``mse``, ``l1``, ``l1_ssim``)."""
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    if name == "l1_ssim":
        def l1_ssim(pred, target):
            return F.l1_loss(pred, target) + (1 - ssim(pred.float(), target.float()))
        return l1_ssim
    raise ReconError(f"loss {name!r}: unknown; expected one of mse, l1, l1_ssim")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR ``10 log10(1 / MSE)`` (data in [0, 1]) of ``(B, ...)`` tensors: shape ``(B,)``."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-20))
