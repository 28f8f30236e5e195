"""Exact spatially-varying blur: every source pixel spread with its own PSF (the ground truth).

``n(i) = sum_j h(i - j; field(j)) m(j)``: the PSF depends on the *source* position ``j`` only. Zero boundary:
light from outside the window is absent, light leaving it is lost. Cost ``O(H W k^2)`` after computing one
PSF per pixel, so it is meant for tests and for small images (128 x 128 with 33 x 33 PSFs: seconds).
"""

from __future__ import annotations

import numpy as np

from ..field import field_coords
from .lowrank import as_image_batch, result_dtype

__all__ = ["ExactOperator"]


class ExactOperator:
    """Brute-force spatially-varying blur of a window of a lens's field, with its adjoint.

    Parameters
    ----------
    lens : Lens
    shape : (int, int)
        Window shape ``(H, W)`` (keyword-only, as ``origin``).
    origin : (int, int)
        Window origin ``(row, col)`` in the lens field.
    allow_outside : bool
        Allow windows reaching past the frame (used to blur a margin around a window).
    """

    def __init__(self, lens, *, shape, origin=(0, 0), allow_outside: bool = False):
        from ..field import check_window

        self.lens = lens
        self.origin, self.shape = check_window(lens, origin=origin, shape=shape, allow_outside=allow_outside)
        xy = field_coords(lens, origin=self.origin, shape=self.shape, allow_outside=allow_outside)
        H, W = self.shape
        k = lens.psf_sampling.size_px
        self.k = k
        #: PSF of every source pixel, ``(H, W, k, k)`` float64
        self.psfs = lens.psfs(xy[0].ravel(), xy[1].ravel(), allow_outside=allow_outside).reshape(H, W, k, k)

    def forward(self, m: np.ndarray) -> np.ndarray:
        """Blur ``m`` of shape ``(H, W)`` or ``(B, H, W)`` (computed in float64); dtype by :func:`result_dtype`."""
        mb, single = as_image_batch(m, self.shape, np.float64)
        H, W = self.shape
        k, c = self.k, self.k // 2
        out = np.zeros((mb.shape[0], H + k - 1, W + k - 1))
        for dy in range(k):
            for dx in range(k):
                out[:, dy : dy + H, dx : dx + W] += mb * self.psfs[:, :, dy, dx]
        out = out[:, c : c + H, c : c + W].astype(result_dtype(mb), copy=False)
        return out[0] if single else out

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """Adjoint ``A^T y``: ``(A^T y)(j) = sum_i h(i - j; field(j)) y(i)``."""
        yb, single = as_image_batch(y, self.shape, np.float64)
        H, W = self.shape
        k, c = self.k, self.k // 2
        ypad = np.zeros((yb.shape[0], H + k - 1, W + k - 1))
        ypad[:, c : c + H, c : c + W] = yb
        out = np.zeros((yb.shape[0], H, W))
        for dy in range(k):
            for dx in range(k):
                out += ypad[:, dy : dy + H, dx : dx + W] * self.psfs[:, :, dy, dx]
        out = out.astype(result_dtype(yb), copy=False)
        return out[0] if single else out

    __call__ = forward
