"""MultiWiener: K learnable Wiener deconvolutions of one image, one output channel per PSF (the first layer of
MultiWienerNet: Yanny, Monakhova, Shuai & Waller, "Deep learning for fast spatially varying deconvolution",
Optica 9, 96 (2022)).

For each PSF ``h_k`` (k < K) and regularisation ``r_k``::

    x_k = crop( IFFT( conj(H_k) Y / (|H_k|^2 + r_k) ) ),   Y = FFT(zero-pad(y)),  H_k = FFT(centred h_k)

Following the authors' TensorFlow layer ``MultiWienerDeconvolution`` (``tensorflow/models/layers.py`` of
Waller-Lab/MultiWienerNet), not their PyTorch port (which wraps circularly and drops the non-negativity):

- **Linear, not circular**: the image is zero-padded to about twice its size before the FFT and the result
  cropped back (the authors pad by ``ceil(h/2), floor(h/2)`` on each side and crop the centre). Here the
  padding is at the bottom/right to ``P = max(2H, H + k - 1)`` rows (same for columns) and the crop is the top
  left ``H x W``: the filter is circular on the padded grid, hence shift-equivariant there, so where the image
  sits in the grid changes nothing but the crop; ``H + k - 1`` keeps the convolution linear when the PSF is
  larger than the image (the authors' PSFs are always frame-sized, so ``2H`` sufficed for them).
- **PSF centring**: the authors' PSFs are frame-sized and centred, padded like the image, and the result is
  ``ifftshift``-ed. Here the PSFs are small ``k x k`` boxes (psfsim's), their centre pixel ``k // 2`` moved to
  pixel (0, 0) of the grid (as :func:`psfsim.restore.wiener.psf_tf`), which introduces no shift: the same
  filter, no shift to undo.
- **Regularisation**: the authors hold ``Ks`` (``(1, 1, K)``, initialised to ``np.ones``, i.e. 1) with the
  Keras constraint ``tf.nn.relu`` (a projection onto ``K >= 0`` after every optimiser step) and use
  ``|H|^2 + 1000 * Ks`` in the denominator. Here the raw parameter :attr:`reg_raw` starts at ``reg_init = 1``
  and the regularisation is :attr:`reg` ``= reg_scale * clamp(reg_raw, min=0)`` with ``reg_scale = 1000``: it
  is ``>= 0`` whatever the optimiser does, its gradient passes at exactly 0 (``clamp``'s backward), and
  :meth:`constrain_` is the Keras projection (call it after ``optimizer.step()`` to reproduce Keras exactly:
  without it a parameter pushed below 0 stays there with zero gradient). The factor 1000 is the authors'
  preconditioning: a step of size ``lr`` on ``reg_raw`` moves the regularisation by ``1000 lr``.
- **PSF normalisation**: the stack is divided by its global maximum (``psfs / np.max(psfs)`` in the authors'
  training notebook), which keeps the PSFs' relative throughput (vignetting). The PSFs are learnable and not
  re-normalised or constrained afterwards, as in the authors' code.
- **Precision**: the FFTs run in float32 (float64 for float64 inputs) with autocast disabled, and the result is
  cast back to the input's dtype.

Caveat on the authors' ``reg_init = 1`` (x 1000) with psfsim's PSFs: psfsim's PSFs sum to 1 in a 33 x 33 box,
so after max-normalisation ``|H(0)|^2`` is about 30 and the initial filter is strongly over-regularised
(close to ``conj(H) Y / 1000``, a blurred, scaled copy); the authors' frame-sized, diffuse PSFs had much more
energy per unit peak. Both are learnable; pass ``reg_init`` to start elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ReconError

__all__ = ["MultiWiener", "gaussian_psfs", "lens_psfs", "padded_size"]


def padded_size(n: int, k: int) -> int:
    """FFT size along an axis of ``n`` pixels with a PSF of ``k``: twice the size, at least ``n + k - 1``."""
    return max(2 * int(n), int(n) + int(k) - 1)


def lens_psfs(lens, grid=(3, 3)) -> np.ndarray:
    """``(K, k, k)`` PSFs of ``lens`` on a ``grid = (ny, nx)`` spanning the frame (corners included), row-major,
    from :meth:`psfsim.Lens.psf_grid`, divided by the stack's global maximum."""
    ny, nx = (int(g) for g in grid)
    if ny < 1 or nx < 1:
        raise ReconError(f"grid = {tuple(grid)!r}: expected two whole numbers >= 1")
    g = lens.psf_grid(ny, nx)
    p = np.asarray(g.psfs, np.float64).reshape(ny * nx, *g.psfs.shape[-2:])
    return p / p.max()


def gaussian_psfs(grid=(3, 3), size: int = 15) -> np.ndarray:
    """Stand-in PSFs when no lens is given: ``(K, size, size)`` isotropic Gaussians on a ``grid`` of field
    positions spanning ``[-1, 1]^2``, ``sigma = size / 8 * (1 + r / 2)`` at field height ``r`` (normalised so
    the corners are at 1), so the blur widens towards the edges; divided by the stack's global maximum."""
    ny, nx = (int(g) for g in grid)
    if ny < 1 or nx < 1:
        raise ReconError(f"grid = {tuple(grid)!r}: expected two whole numbers >= 1")
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ReconError(f"psf_size = {size!r}: expected an odd whole number >= 1")
    fy = np.linspace(-1, 1, ny) if ny > 1 else np.zeros(1)
    fx = np.linspace(-1, 1, nx) if nx > 1 else np.zeros(1)
    u = np.arange(size) - size // 2
    out = []
    for y in fy:
        for x in fx:
            r = np.hypot(x, y) / np.sqrt(2)
            s = size / 8 * (1 + r / 2)
            g = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * s * s))
            out.append(g / g.sum())
    p = np.stack(out)
    return p / p.max()


class MultiWiener(nn.Module):
    """K learnable Wiener deconvolutions: ``(B, 1, H, W) -> (B, K, H, W)``.

    Parameters
    ----------
    psfs : array or tensor, (K, k, k)
        Initial PSFs, centred (centre pixel ``k // 2``), used as given (normalise them beforehand:
        :func:`lens_psfs` and :func:`gaussian_psfs` divide by the global maximum). Square or not, odd or even.
    reg_init : float or sequence of K floats
        Initial raw regularisation (the authors: 1).
    reg_scale : float
        Factor between the raw parameter and the regularisation (the authors: 1000).
    learn_psfs, learn_reg : bool
        Whether the PSFs / the regularisation are trained (``requires_grad``).

    Attributes
    ----------
    psfs : Parameter (K, k, k)
    reg_raw : Parameter (K,)
    reg : tensor (K,), ``reg_scale * clamp(reg_raw, min=0)``: the regularisation in the denominator.

    Any input size (the FFT size follows it: :func:`padded_size`), device and dtype (float64 stays float64,
    anything else is computed in float32 and cast back); autocast is disabled inside.
    """

    def __init__(self, psfs, *, reg_init=1.0, reg_scale: float = 1000.0, learn_psfs: bool = True,
                 learn_reg: bool = True):
        super().__init__()
        p = torch.as_tensor(np.asarray(psfs, dtype=np.float64) if not isinstance(psfs, torch.Tensor) else psfs)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or p.shape[0] < 1 or min(p.shape[-2:]) < 1:
            raise ReconError(f"psfs of shape {tuple(p.shape)}: expected (K, k, k)")
        if not torch.isfinite(p).all():
            raise ReconError("psfs: non-finite values")
        K = p.shape[0]
        r = torch.as_tensor(reg_init, dtype=torch.float64).reshape(-1)
        if r.numel() == 1:
            r = r.expand(K).clone()
        if r.numel() != K or not torch.isfinite(r).all() or (r < 0).any():
            raise ReconError(f"reg_init = {reg_init!r}: expected a number >= 0 or {K} of them")
        if not (np.isfinite(reg_scale) and reg_scale > 0):
            raise ReconError(f"reg_scale = {reg_scale!r}: expected a number > 0")
        dtype = torch.get_default_dtype()
        self.psfs = nn.Parameter(p.detach().to(dtype).clone(), requires_grad=bool(learn_psfs))
        self.reg_raw = nn.Parameter(r.to(dtype), requires_grad=bool(learn_reg))
        self.reg_scale = float(reg_scale)

    @property
    def n_psfs(self) -> int:
        return self.psfs.shape[0]

    @property
    def psf_size(self) -> tuple[int, int]:
        return tuple(self.psfs.shape[-2:])

    @property
    def reg(self) -> torch.Tensor:
        """The regularisation ``reg_scale * clamp(reg_raw, min=0)`` (K,), always >= 0."""
        return self.reg_scale * self.reg_raw.clamp(min=0)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project the raw regularisation onto ``>= 0`` in place (the authors' Keras ``constraint=tf.nn.relu``,
        which Keras applies after every optimiser step)."""
        self.reg_raw.clamp_(min=0)

    def transfer(self, shape, dtype, device) -> torch.Tensor:
        """``(K, P, Q // 2 + 1)`` complex transfer functions of the PSFs on a real-FFT grid ``shape = (P, Q)``, the
        PSF centre at pixel (0, 0)."""
        P, Q = shape
        psf = self.psfs.to(device=device, dtype=dtype)
        k0, k1 = psf.shape[-2:]
        big = F.pad(psf, (0, Q - k1, 0, P - k0))
        big = torch.roll(big, shifts=(-(k0 // 2), -(k1 // 2)), dims=(-2, -1))
        return torch.fft.rfft2(big)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[1] != 1:
            raise ReconError(f"input of shape {tuple(getattr(y, 'shape', ()))}: expected (B, 1, H, W)")
        H, W = y.shape[-2:]
        k0, k1 = self.psf_size
        P, Q = padded_size(H, k0), padded_size(W, k1)
        cdtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=y.device.type, enabled=False):
            yy = F.pad(y.to(cdtype).contiguous(), (0, Q - W, 0, P - H))  # zeros: linear convolution
            Y = torch.fft.rfft2(yy)  # (B, 1, P, Q//2+1)
            Hf = self.transfer((P, Q), cdtype, y.device)  # (K, P, Q//2+1)
            denom = Hf.real.square() + Hf.imag.square() + self.reg.to(cdtype)[:, None, None]
            X = Y * (Hf.conj() / denom)  # (B, K, P, Q//2+1)
            x = torch.fft.irfft2(X, s=(P, Q))[..., :H, :W]
        return x.to(y.dtype)

    def extra_repr(self) -> str:
        return f"K={self.n_psfs}, psf_size={self.psf_size}, reg_scale={self.reg_scale:g}"
