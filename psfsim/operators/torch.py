"""Differentiable fast blur in PyTorch: the low-rank product-convolution of :mod:`.lowrank` for batches of
windows anywhere in the field.

:class:`LowRankBlur` holds one lens's basis (eigen-PSFs, node coefficients and the spline pieces, all as
buffers in its ``state_dict``) and blurs ``x (B, C, H, W)`` whose sample ``b`` is the window at
``origins[b] = (row, col)`` of the frame: the coefficient maps are computed on the input's device from the
separable spline factors (``Wr (B, H, ny)``, ``Wc (B, W, nx)``), chunk by chunk of eigen-PSFs, so nothing of
size ``(K, frame)`` ever exists. This is what blurs clean crops at random field positions on the GPU during
training and what the pipelines' simulate route uses. It equals :class:`~.lowrank.LowRankOperator` of each
window (tested), and :meth:`LowRankBlur.adjoint` is its adjoint.

Device and dtype follow the input (float32 / float64; the eigen-PSF transforms are cached per device, dtype
and padded shape, bounded in bytes).
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache import BoundedCache

__all__ = ["LowRankBlur", "WindowBlur"]

#: Largest complex work array of one FFT chunk (the eigen-PSFs are processed in chunks beyond it).
_CHUNK_BYTES = 256 * 2**20
#: Bound of the cached eigen-PSF transforms of one module.
_KFT_BYTES = 256 * 2**20


class LowRankBlur(torch.nn.Module):
    """Spatially-varying blur of batches of windows of one lens field (torch, differentiable).

    Parameters
    ----------
    eigen_psfs : Tensor, (K, k, k)
    coeffs : Tensor, (ny, nx, K)
        Coefficient of each eigen-PSF at each grid node.
    row_breaks, row_coefs, col_breaks, col_coefs : Tensor
        Spline pieces of the grid's rows and columns (:class:`~.spline.SplineAxis`).

    Build it with :meth:`from_basis` (or :func:`psfsim.operators.torch_blur`); a ``state_dict`` of it loads
    into one built from the same basis.
    """

    def __init__(self, eigen_psfs, coeffs, row_breaks, row_coefs, col_breaks, col_coefs):
        super().__init__()
        f64 = dict(dtype=torch.float64)
        self.register_buffer("eigen_psfs", torch.as_tensor(eigen_psfs, **f64))
        self.register_buffer("coeffs", torch.as_tensor(coeffs, **f64))
        self.register_buffer("row_breaks", torch.as_tensor(row_breaks, **f64))
        self.register_buffer("row_coefs", torch.as_tensor(row_coefs, **f64))
        self.register_buffer("col_breaks", torch.as_tensor(col_breaks, **f64))
        self.register_buffer("col_coefs", torch.as_tensor(col_coefs, **f64))
        #: ``(H, W)`` of the lens field for the window check (zeros: unknown, no check) and the lens's
        #: fingerprint (32 bytes; zeros: unknown): buffers, so a state_dict carries them and a state_dict of
        #: another lens is refused by a module built for this one
        self.register_buffer("field_shape", torch.zeros(2, dtype=torch.int64))
        self.register_buffer("lens_fingerprint", torch.zeros(32, dtype=torch.uint8))
        self._kft = BoundedCache(max_bytes=_KFT_BYTES)

    @classmethod
    def from_basis(cls, basis) -> "LowRankBlur":
        """The module of a :class:`~.lowrank.LowRankBasis` (float64 buffers on the CPU; ``.to(device)`` moves them)."""
        m = cls(basis.eigen_psfs, basis.coeffs, basis.row_axis.breaks, basis.row_axis.coefs, basis.col_axis.breaks,
                basis.col_axis.coefs)
        m.field_shape.copy_(torch.tensor([int(v) for v in basis.lens.field.shape_px]))
        m.lens_fingerprint.copy_(torch.tensor(list(bytes.fromhex(basis.lens.fingerprint)), dtype=torch.uint8))
        return m

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        theirs = state_dict.get(prefix + "lens_fingerprint")
        if theirs is not None and bool(self.lens_fingerprint.any()) and bool(theirs.any()) \
                and not torch.equal(theirs.cpu(), self.lens_fingerprint.cpu()):
            from ..errors import PsfsimError

            raise PsfsimError(f"state_dict of the blur of lens {bytes(theirs.tolist()).hex()[:12]} loaded into the blur "
                              f"of lens {bytes(self.lens_fingerprint.tolist()).hex()[:12]}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def rank(self) -> int:
        return self.eigen_psfs.shape[0]

    @property
    def k(self) -> int:
        return self.eigen_psfs.shape[-1]

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .double(): cached transforms belong to the old place
        self._kft = BoundedCache(max_bytes=_KFT_BYTES)
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------------------------------
    def pad_shape(self, shape) -> tuple[int, int]:
        import scipy.fft

        H, W = shape
        return (scipy.fft.next_fast_len(H + self.k - 1, True), scipy.fft.next_fast_len(W + self.k - 1, True))

    def _kernel_ft(self, pad, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(pad), str(like.device), like.dtype)
        return self._kft.get(key, lambda: torch.fft.rfft2(self.eigen_psfs.to(device=like.device, dtype=like.dtype), s=pad))

    def spline_factors(self, origins: torch.Tensor, shape, like: torch.Tensor):
        """``Wr (B, H, ny)`` and ``Wc (B, W, nx)`` of windows at ``origins (B, 2)``, on ``like``'s device and dtype."""
        from .spline import SplineAxis

        H, W = shape
        o = origins.to(device=like.device, dtype=torch.float64)
        rows = o[:, :1] + torch.arange(H, device=like.device, dtype=torch.float64)[None]
        cols = o[:, 1:] + torch.arange(W, device=like.device, dtype=torch.float64)[None]
        dev = dict(device=like.device)
        Wr = SplineAxis.weights_torch(rows, self.row_coefs.to(**dev), self.row_breaks.to(**dev))
        Wc = SplineAxis.weights_torch(cols, self.col_coefs.to(**dev), self.col_breaks.to(**dev))
        return Wr.to(like.dtype), Wc.to(like.dtype)

    def coefficient_maps(self, origins: torch.Tensor, shape, like: torch.Tensor, ks: slice = slice(None)) -> torch.Tensor:
        """Coefficient maps ``(B, K', H, W)`` of eigen-PSFs ``ks`` for windows at ``origins (B, 2)``."""
        Wr, Wc = self.spline_factors(origins, shape, like)
        C = self.coeffs[:, :, ks].to(device=like.device, dtype=like.dtype)
        T = torch.einsum("nha,abk->nkhb", Wr, C)  # rows first: (B, K', H, nx)
        return torch.einsum("nkhb,nwb->nkhw", T, Wc)

    def _check(self, x: torch.Tensor, origins, allow_outside: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape/dtype/window checks; returns ``x`` in its computation dtype (the dtype rule: float32 and float64
        kept, float16 / bfloat16 / integers computed and returned in float32) and the origins."""
        from ..errors import PsfsimError

        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise PsfsimError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, C, H, W)")
        if x.is_complex():
            raise PsfsimError(f"x of dtype {x.dtype}: expected a real tensor")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        o = torch.as_tensor(origins)
        if o.shape != (x.shape[0], 2):
            raise PsfsimError(f"origins of shape {tuple(o.shape)}: expected ({x.shape[0]}, 2), one (row, col) per sample")
        if torch.is_floating_point(o) and not torch.equal(o, o.round()):
            raise PsfsimError("origins: expected whole pixel positions (row, col)")
        shape = tuple(int(v) for v in self.field_shape.tolist()) if bool(self.field_shape.all()) else None
        if not allow_outside and shape is not None and len(o):
            H, W = x.shape[-2:]
            lo = o.min(dim=0).values
            hi = o.max(dim=0).values
            if int(lo[0]) < 0 or int(lo[1]) < 0 or int(hi[0]) + H > shape[0] or int(hi[1]) + W > shape[1]:
                bad = ((o[:, 0] < 0) | (o[:, 1] < 0) | (o[:, 0] + H > shape[0]) | (o[:, 1] + W > shape[1])).nonzero()[0, 0]
                raise PsfsimError(f"window of shape {(H, W)} at origin {tuple(int(v) for v in o[bad])} (sample "
                                 f"{int(bad)}) does not fit in the lens field of shape {shape} (pass allow_outside=True "
                                 "for windows with a margin past the frame)")
        return x, o

    def _chunks(self, B: int, C: int, pad, like: torch.Tensor):
        per = B * C * pad[0] * (pad[1] // 2 + 1) * 2 * like.element_size()
        step = max(1, int(_CHUNK_BYTES // max(per, 1)))
        return [slice(i, min(i + step, self.rank)) for i in range(0, self.rank, step)]

    def _plan(self, x: torch.Tensor):
        """Padded FFT shape, eigen-PSF transforms on ``x``'s device/dtype, and the PSF centre offset."""
        pad = self.pad_shape(x.shape[-2:])
        return pad, self._kernel_ft(pad, x), self.k // 2

    def forward(self, x: torch.Tensor, origins, *, allow_outside: bool = False) -> torch.Tensor:
        """Blur ``x (B, C, H, W)``: sample ``b`` is the window at ``origins[b] = (row, col)`` of the frame.

        Zero boundary (light from outside the window is absent), as the numpy operator. Same shape, device
        and dtype out; differentiable in ``x``. Windows must fit in the frame unless ``allow_outside``.
        """
        x, o = self._check(x, origins, allow_outside)
        B, C, H, W = x.shape
        if B == 0 or C == 0:
            return x.new_zeros(x.shape)
        pad, kf, c = self._plan(x)
        acc = None
        for sl in self._chunks(B, C, pad, x):
            w = self.coefficient_maps(o, (H, W), x, sl)  # (B, K', H, W)
            F = torch.fft.rfft2(x[:, :, None] * w[:, None], s=pad)  # (B, C, K', Hp, Wf)
            term = (F * kf[sl]).sum(dim=2)
            acc = term if acc is None else acc + term
        return torch.fft.irfft2(acc, s=pad)[..., c : c + H, c : c + W]

    def adjoint(self, y: torch.Tensor, origins, *, allow_outside: bool = False) -> torch.Tensor:
        """Adjoint ``A^T y`` of :meth:`forward` for ``y (B, C, H, W)`` at ``origins (B, 2)``."""
        y, o = self._check(y, origins, allow_outside)
        B, C, H, W = y.shape
        if B == 0 or C == 0:
            return y.new_zeros(y.shape)
        pad, kf, c = self._plan(y)
        Y = torch.fft.rfft2(torch.nn.functional.pad(y, (c, pad[1] - W - c, c, pad[0] - H - c)))
        out = torch.zeros_like(y)
        for sl in self._chunks(B, C, pad, y):
            Z = torch.fft.irfft2(Y[:, :, None] * kf[sl].conj(), s=pad)[..., :H, :W]  # (B, C, K', H, W)
            out = out + (Z * self.coefficient_maps(o, (H, W), y, sl)[:, None]).sum(dim=2)
        return out


class WindowBlur(torch.nn.Module):
    """One fixed window of the field as a torch module: ``module(x (..., H, W))``, with :meth:`adjoint`.

    Wraps :class:`LowRankBlur` (no dense coefficient maps); built by :func:`psfsim.operators.to_torch` from a
    numpy :class:`~.lowrank.LowRankOperator`.
    """

    def __init__(self, op):
        super().__init__()
        self.blur = LowRankBlur.from_basis(op.basis)
        self.shape = tuple(op.shape)
        self.register_buffer("origin", torch.tensor(op.origin, dtype=torch.int64))
        self.blur.field_shape.zero_()  # the numpy operator checked (or explicitly allowed) its window

    @property
    def rank(self) -> int:
        return self.blur.rank

    def _call(self, fn, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != torch.Size(self.shape):
            from ..errors import PsfsimError

            raise PsfsimError(f"expected (..., {self.shape[0]}, {self.shape[1]}), got {tuple(x.shape)}")
        lead = x.shape[:-2]
        xb = x.reshape(-1, 1, *self.shape)
        out = fn(xb, self.origin.expand(xb.shape[0], 2))
        return out.reshape(*lead, *self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.blur.forward, x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._call(self.blur.adjoint, y)
